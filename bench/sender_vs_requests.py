"""Delivery throughput: safe_http.Sender against a plain requests.Session, side by side.

Both post the same webhook-sized JSON body to one fast local receiver (a minimal keep-alive
HTTP/1.1 server in its own process, so the receiver is not what is measured). Rounds alternate
between the two clients; the medians of the per-round rates are printed, with their ratio.

    .venv/bin/python bench/sender_vs_requests.py [--rounds 7] [--posts 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.net import safe_http

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class _Receiver(asyncio.Protocol):
    """Answers every request at once; understands just Content-Length bodies, which is all we send."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = 0
            for line in self.buffer[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            self.buffer = self.buffer[end:]
            self.transport.write(ANSWER)


def _serve(port_queue) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Receiver, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def _rate(post, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        post()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--posts", type=int, default=2000, help="posts per client per round")
    args = parser.parse_args()

    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=10)}/hook"
    body = json.dumps({"event": "message.received", "data": {"text": "x" * 400}}).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "Wahook-Webhook/1.0", "X-Webhook-Id": "evt_1"}

    sender = safe_http.Sender(allow_http=True, allow_private=True)
    session = requests.Session()

    def with_sender() -> None:
        assert sender.post(url, body, headers, 10).status_code == 200

    def with_requests() -> None:
        assert session.post(url, data=body, headers=headers, timeout=10, allow_redirects=False).status_code == 200

    _rate(with_sender, 200)  # warm up both: first connections, imports, caches
    _rate(with_requests, 200)
    rates: dict[str, list[float]] = {"safe_http.Sender": [], "requests.Session": []}
    for _ in range(args.rounds):
        rates["safe_http.Sender"].append(_rate(with_sender, args.posts))
        rates["requests.Session"].append(_rate(with_requests, args.posts))
    sender.close()
    session.close()
    server.terminate()

    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{args.rounds} rounds of {args.posts} sequential POSTs each, one process, keep-alive")
    for name, values in rates.items():
        spread = f"{min(values):.0f}..{max(values):.0f}"
        print(f"  {name:18} median {medians[name]:7.0f} posts/s   (rounds {spread})")
    ratio = medians["safe_http.Sender"] / medians["requests.Session"]
    print(f"  ratio Sender/requests: {ratio:.2f}")


if __name__ == "__main__":
    main()
