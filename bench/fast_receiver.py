"""A fast webhook receiver for the benchmarks: a tiny asyncio HTTP/1.1 keep-alive server.

It answers every POST with 200 at once (or `delay` seconds after it arrived, a receiver with
work of its own to do) and records, per request, the `X-Webhook-Id` header
and the arrival time (time.time()), so the benchmark can count deliveries, find duplicates
and measure latency. It understands only what deliveries use: Content-Length bodies.

Control requests (GET) from the benchmark itself:
  /_count  -> the number of POSTs recorded
  /_dump   -> every record as "arrival_time id" lines
  /_reset  -> forget the records

Run in its own process (`serve(port, ready)`) so the process measured is not the one receiving.
"""

from __future__ import annotations

import asyncio
import socket
import time

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
ID_HEADER = b"\r\nx-webhook-id:"


class Records:
    """What arrived, shared by every connection of the process."""

    def __init__(self) -> None:
        self.ids: list[bytes] = []
        self.times: list[float] = []

    def dump(self) -> bytes:
        return b"".join(b"%.6f %s\n" % (t, i) for t, i in zip(self.times, self.ids, strict=True))


class Protocol(asyncio.Protocol):
    """One connection; parses requests out of the byte stream, answers each one in order."""

    def __init__(self, records: Records, delay: float = 0.0) -> None:
        self.records = records
        self.delay = delay
        self.buffer = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        out = []
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            raw_head = self.buffer[:head_end]
            head = raw_head.lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : line_end if line_end >= 0 else None])
            end = head_end + 4 + length
            if len(self.buffer) < end:
                break
            self.buffer = self.buffer[end:]
            out.append(self.handle(raw_head, head, now))
        if out and self.delay:
            # Every answer waits the same time from its arrival, so they still go out in order.
            asyncio.get_running_loop().call_later(self.delay, self.answer, b"".join(out))
        elif out:
            self.transport.write(b"".join(out))

    def answer(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def handle(self, raw_head: bytes, head: bytes, now: float) -> bytes:
        if head.startswith(b"get "):
            return self.control(head.split(b" ", 2)[1])
        at = head.find(ID_HEADER)
        if at >= 0:
            line_end = head.find(b"\r\n", at + 2)
            self.records.ids.append(raw_head[at + len(ID_HEADER) : line_end if line_end >= 0 else None].strip())
        else:
            self.records.ids.append(b"-")
        self.records.times.append(now)
        return ANSWER

    def control(self, path: bytes) -> bytes:
        if path == b"/_reset":
            self.records.ids.clear()
            self.records.times.clear()
            body = b"ok"
        elif path == b"/_dump":
            body = self.records.dump()
        else:
            body = str(len(self.records.ids)).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def serve(port: int, ready=None, delay: float = 0.0) -> None:
    """Listen on 127.0.0.1:`port` until killed; set `ready` (a multiprocessing Event) once
    listening. Each POST is answered `delay` seconds after it arrived."""

    async def main() -> None:
        records = Records()
        server = await asyncio.get_running_loop().create_server(
            lambda: Protocol(records, delay), "127.0.0.1", port, reuse_address=True, backlog=1024
        )
        if ready is not None:
            ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())
