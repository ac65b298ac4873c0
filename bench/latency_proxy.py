"""A TCP proxy that puts a database on "another machine": every packet is held `delay` seconds
each way, and every round trip is counted.

    python bench/latency_proxy.py --to /path/to/.s.PGSQL.5432 --delay 0.002 [--port N]

prints the port it listens on (127.0.0.1 only) and runs until killed. `--to` is a Unix socket
path or host:port. A packet is held, not the connection: what a client sends while earlier
packets are still held follows them 2 ms later, as on a network, so a client that pipelines
its statements pays the delay once per round trip, not once per statement.

A round trip is counted each time a client sends after the server has answered (or first
on a connection): what a client that waits for each answer pays the delay for. The tests
use this count to hold intake to its budget of round trips (tests/storage/test_pg.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading


class LatencyProxy:
    """The proxy on its own event loop thread: `with LatencyProxy(to, delay) as proxy:` then
    connect to 127.0.0.1:proxy.port. `turns` counts round trips since the last `reset()`."""

    def __init__(self, to: str, delay: float = 0.002, port: int = 0) -> None:
        self.to, self.delay, self.port = to, delay, port
        self.turns = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)

    def reset(self) -> None:
        self.turns = 0

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self.serve(), self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.to.startswith("/"):
            return await asyncio.open_unix_connection(self.to)
        host, _, port = self.to.rpartition(":")
        return await asyncio.open_connection(host, int(port))

    async def _client(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await self._open_upstream()
        except OSError:
            client_writer.close()
            return
        last = ["server"]  # who spoke last on this connection

        def from_client() -> None:
            if last[0] == "server":
                self.turns += 1
            last[0] = "client"

        def from_server() -> None:
            last[0] = "server"

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(
                self._pipe(client_reader, server_writer, from_client),
                self._pipe(server_reader, client_writer, from_server),
                return_exceptions=True,
            )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen) -> None:
        """Copy one direction, each packet `delay` after it was read, in order."""
        loop = asyncio.get_running_loop()
        held: asyncio.Queue = asyncio.Queue()

        async def release() -> None:
            while (item := await held.get()) is not None:
                due, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(release())
        try:
            while data := await reader.read(65536):
                seen()
                held.put_nowait((loop.time() + self.delay, data))
        except (ConnectionError, OSError):
            pass
        held.put_nowait(None)
        with contextlib.suppress(ConnectionError, OSError):
            await sender
            writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", required=True, help="the server: a Unix socket path or host:port")
    parser.add_argument("--delay", type=float, default=0.002, help="seconds each packet is held, each way")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (127.0.0.1); 0 for any free one")
    args = parser.parse_args()
    with LatencyProxy(args.to, args.delay, args.port) as proxy:
        print(proxy.port, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
