"""A local stand-in for Meta's Graph API media endpoints, on 127.0.0.1, that also misbehaves.

`GET /v23.0/<media id>` answers, for a valid bearer token, `{"url", "mime_type", "sha256",
"file_size", "id", "messaging_product"}` as Graph does; the URL (`/files/<media id>/<nonce>`)
lives `url_ttl` seconds and needs the token too, like Meta's lookaside URLs. `GET /v23.0/me`
answers the token check. Each `Media` can be told to make Graph answer a status (401, 404, 500),
to stall, to announce a wrong hash, to send a body larger than announced, or to answer the
download with a status. A file may be bytes or a path on disk (served in chunks, for large ones).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from receiver import StandInServer

TOKEN = "graph-test-token"


@dataclass
class Media:
    content: bytes | Path = b""
    mime_type: str = "image/jpeg"
    graph_status: int = 200  # what GET /<id> answers
    download_status: int = 200  # what the file URL answers
    stall: float = 0.0  # seconds the file URL waits before its first byte
    wrong_hash: bool = False  # announce a sha256 the file does not have
    announce_size: int | None = None  # file_size to announce instead of the real one
    graph_delay: float = 0.0
    closes: str = ""  # "", "close", "http/1.0" or "http/1.0-eof": how answers end the connection
    hits: list[str] = field(default_factory=list)  # "graph" and "file" per request served

    def size(self) -> int:
        return self.content.stat().st_size if isinstance(self.content, Path) else len(self.content)

    def sha256(self) -> str:
        if self.wrong_hash:
            return hashlib.sha256(b"something else").hexdigest()
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()

    def chunks(self, size: int = 256 * 1024):
        if isinstance(self.content, bytes):
            yield self.content
            return
        with self.content.open("rb") as f:
            while chunk := f.read(size):
                yield chunk


class GraphStub:
    """Start with `GraphStub()`; `.graph_url` goes in meta.graph_url; `.media[id] = Media(...)`."""

    def __init__(self, url_ttl: float = 300.0) -> None:
        self.media: dict[str, Media] = {}
        self.url_ttl = url_ttl
        self.urls: dict[str, tuple[str, float]] = {}  # nonce -> (media id, expiry)
        self.seen_tokens: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def answer(
                self, status: int, body: bytes, content_type: str = "application/json", closes: str = ""
            ) -> None:
                self.start(status, content_type, len(body), closes)
                self.wfile.write(body)

            def start(self, status: int, content_type: str, length: int, closes: str) -> None:
                """The status line and headers, ending the connection after the body as `closes` says."""
                if closes.startswith("http/1.0"):
                    self.protocol_version = "HTTP/1.0"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if closes != "http/1.0-eof":
                    self.send_header("Content-Length", str(length))
                if closes == "close":
                    self.send_header("Connection", "close")
                if closes:
                    self.close_connection = True
                self.end_headers()

            def error(self, status: int, message: str) -> None:
                body = {"error": {"message": message, "type": "OAuthException", "code": 100}}
                self.answer(status, json.dumps(body).encode())

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                with outer.lock:
                    outer.seen_tokens.append(token)
                if token != TOKEN:
                    return self.error(401, "Invalid OAuth access token - Cannot parse access token")
                parts = self.path.strip("/").split("/")
                if parts[:1] == ["files"] and len(parts) == 3:
                    return self.file(parts[1], parts[2])
                if len(parts) == 2 and parts[1].startswith("me"):
                    return self.answer(200, b'{"id": "1234", "name": "wahook test user"}')
                if len(parts) == 2:
                    return self.describe(parts[1])
                return self.error(404, "Unknown path")

            def describe(self, media_id: str) -> None:
                media = outer.media.get(media_id)
                if media is None:
                    return self.error(400, f"Unsupported get request. Object with ID '{media_id}' does not exist")
                media.hits.append("graph")
                time.sleep(media.graph_delay)
                if media.graph_status != 200:
                    return self.error(media.graph_status, f"stand-in told to answer {media.graph_status}")
                nonce = secrets.token_hex(8)
                with outer.lock:
                    outer.urls[nonce] = (media_id, time.monotonic() + outer.url_ttl)
                host, port = outer.server.server_address[:2]
                body = {
                    "url": f"http://{host}:{port}/files/{media_id}/{nonce}",
                    "mime_type": media.mime_type,
                    "sha256": media.sha256(),
                    "file_size": media.size() if media.announce_size is None else media.announce_size,
                    "id": media_id,
                    "messaging_product": "whatsapp",
                }
                self.answer(200, json.dumps(body).encode(), closes=media.closes)

            def file(self, media_id: str, nonce: str) -> None:
                with outer.lock:
                    known = outer.urls.get(nonce)
                media = outer.media.get(media_id)
                if media is None or known is None or known[0] != media_id or known[1] < time.monotonic():
                    return self.answer(404, b"URL expired or unknown", "text/plain")
                media.hits.append("file")
                time.sleep(media.stall)
                if media.download_status != 200:
                    return self.answer(media.download_status, b"no", "text/plain", media.closes)
                self.start(200, media.mime_type, media.size(), media.closes)
                try:
                    for chunk in media.chunks():
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = StandInServer(("127.0.0.1", 0), Handler)
        # close() waits for the serving loop to see its stop flag: at most a 0.05 s poll, not 0.5.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        host, port = self.server.server_address[:2]
        self.base = f"http://{host}:{port}"
        self.graph_url = f"{self.base}/v23.0"

    def expire_urls(self) -> None:
        """Make every URL handed out so far expired, as Meta's do after about five minutes."""
        with self.lock:
            self.urls = {nonce: (mid, 0.0) for nonce, (mid, _) in self.urls.items()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
