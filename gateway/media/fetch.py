"""Fetching media from Meta: the Graph API call for a file's short-lived URL, then the file.

`download` streams the file to a temporary file in the data folder, hashing and counting as it
reads: `media.max_bytes` and the size Graph announced are enforced while streaming, never after.
The finished file is checked against Meta's sha256, then renamed (atomically) to its hex hash.
Every failure is a safe_http.DeliveryError, as for a delivery: words for the monitor, and
`permanent` when retrying cannot help (Graph says the media is gone, the file is over the
limit, the URL is refused).

Where connections may go: `meta.graph_url` comes from the config file and is trusted. The URL
Graph hands back is not (a compromised or impersonated Graph could point it anywhere, and it
gets the access token), so it is fetched with safe_http.get under the delivery rules: https
only unless `delivery.allow_http`, public addresses only unless `delivery.allow_private_urls`,
checked against the addresses the name resolves to when connecting, and no redirects followed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.net import safe_http
from gateway.net.safe_http import DeliveryError
from gateway.storage import private_paths

CHUNK = 64 * 1024
JSON_CAP = 64 * 1024  # a Graph answer larger than this is not a media description
DOWNLOAD_CAP = 240.0  # seconds one whole download may take, however steadily it trickles
MESSAGE_KEEP = 200  # characters of Graph's own error message kept


@dataclass(frozen=True)
class Fetched:
    file: str  # hex sha256, the file's name in the media folder
    size: int
    mime_type: str


def _open(url: str, token: str, *, allow_http: bool, allow_private: bool, timeout: float) -> safe_http.Download:
    """GET `url` with the bearer token over a guarded connection."""
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "wahook", "Accept-Encoding": "identity"}
    return safe_http.get(url, headers, allow_http=allow_http, allow_private=allow_private, timeout=timeout)


def _scrub(text: str, token: str) -> str:
    """Graph's words, short, on one line, and never with the token in them."""
    text = " ".join(str(text).split())[:MESSAGE_KEEP]
    return text.replace(token, "[token]") if token else text


def graph_get(config, path: str, timeout: float | None = None) -> dict:
    """GET `{meta.graph_url}{path}` with the access token, within `timeout` (default
    delivery.timeout) seconds; its JSON object, or DeliveryError."""
    token = config["meta"]["access_token"]
    timeout = float(config["delivery"]["timeout"]) if timeout is None else timeout
    url = config["meta"]["graph_url"].rstrip("/") + path
    # The Graph URL is the admin's own setting: its scheme and address are not second-guessed.
    response = _open(url, token, allow_http=True, allow_private=True, timeout=timeout)
    try:
        raw = response.read(JSON_CAP + 1)
    except Exception as exc:
        raise safe_http.describe(exc, timeout) from exc
    finally:
        response.close()
    try:
        body = json.loads(raw) if len(raw) <= JSON_CAP else None
    except ValueError:
        body = None
    if response.status != 200:
        error = body.get("error") if isinstance(body, dict) else None
        said = _scrub(error.get("message", ""), token) if isinstance(error, dict) else ""
        detail = f": {said}" if said else ""
        status = response.status
        if status in (401, 403):
            raise DeliveryError(f"Graph refused the access token ({status}){detail}; check meta.access_token")
        if status in (400, 404, 410):
            # 400 is what Graph answers for an unknown or expired media id (error code 100).
            raise DeliveryError(f"Graph has no such media ({status}), it may have expired{detail}", permanent=True)
        raise DeliveryError(f"Graph answered {status}{detail}")
    if not isinstance(body, dict):
        raise DeliveryError("Graph's answer is not a JSON object")
    return body


def check_token(config) -> tuple[bool, str]:
    """One Graph call (`/me`) to tell whether the access token works; (ok, words for the page)."""
    if not config["meta"]["access_token"]:
        return False, "No access token is set (meta.access_token)."
    try:
        me = graph_get(config, "/me?fields=id,name")
    except DeliveryError as exc:
        return False, exc.message
    who = " ".join(str(me.get(k, "")) for k in ("name", "id") if me.get(k))
    return True, f"Graph accepted the token{' (' + _scrub(who, config['meta']['access_token']) + ')' if who else ''}."


def hash_matches(expected: str, digest: bytes) -> bool:
    """Meta's sha256 as hex (Graph's answer) or base64 (some webhooks) against the file's digest."""
    expected = expected.strip()
    return expected.lower() == digest.hex() or expected.rstrip("=") in (
        base64.b64encode(digest).decode().rstrip("="),
        base64.urlsafe_b64encode(digest).decode().rstrip("="),
    )


def _whole(value) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def download(config, media_id: str, expected_sha256: str, folder: Path, cap: float = DOWNLOAD_CAP) -> Fetched:
    """Fetch `media_id` into `folder`, named by its hex sha256, within `cap` seconds in all (each
    step within delivery.timeout too). Raises DeliveryError."""
    ends = time.monotonic() + cap
    info = graph_get(config, f"/{media_id}", min(float(config["delivery"]["timeout"]), cap))
    url = info.get("url")
    if not isinstance(url, str) or not url:
        raise DeliveryError("Graph's answer has no download URL")
    limit = config["media"]["max_bytes"]
    announced = _whole(info.get("file_size"))
    if announced is not None and announced > limit:
        raise DeliveryError(f"the file is {announced} bytes, over media.max_bytes ({limit})", permanent=True)
    expected = str(info.get("sha256") or expected_sha256 or "")
    delivery = config["delivery"]
    timeout = max(0.001, min(float(delivery["timeout"]), ends - time.monotonic()))
    token = config["meta"]["access_token"]
    response = _open(
        url, token, allow_http=delivery["allow_http"], allow_private=delivery["allow_private_urls"], timeout=timeout
    )
    private_paths.private_dir(private_paths.private_dir(folder) / "tmp")
    temp = folder / "tmp" / f"{secrets.token_hex(8)}.part"
    try:
        if response.status != 200:
            # The URL lives about five minutes: a 401, 403 or 404 here usually means it expired,
            # and the next attempt asks Graph for a fresh one.
            raise DeliveryError(f"the download URL answered {response.status}")
        length = _whole(response.headers.get("Content-Length"))
        if length is not None and length > limit:
            raise DeliveryError(f"the file is {length} bytes, over media.max_bytes ({limit})", permanent=True)
        digest, size = _stream(response, temp, (limit, announced), timeout, (ends, cap))
        if expected and not hash_matches(expected, digest.digest()):
            raise DeliveryError(f"sha256 mismatch: Meta announced {expected[:64]}, the file is {digest.hexdigest()}")
        name = digest.hexdigest()
        os.replace(temp, folder / name)
        mime = str(info.get("mime_type") or response.headers.get("Content-Type") or "")
        return Fetched(name, size, mime)
    except Exception as exc:
        raise safe_http.describe(exc, timeout) from exc
    finally:
        response.close()
        temp.unlink(missing_ok=True)


def _stream(
    response: safe_http.Download, temp: Path, sizes: tuple[int, int | None], timeout: float, ends: tuple[float, float]
):
    """Copy the body to `temp` chunk by chunk; (sha256 object, size). Each read may wait `timeout`
    seconds; `ends` is (the monotonic time the download must end by, its cap in seconds);
    `sizes` is (media.max_bytes, the size Graph announced)."""
    limit, announced = sizes
    digest, size = hashlib.sha256(), 0
    with private_paths.create_private(temp) as out:
        while True:
            now = time.monotonic()
            if now > ends[0]:
                raise DeliveryError(f"the download took longer than {ends[1]:g} s")
            chunk = response.read(CHUNK, min(now + timeout, ends[0]))
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise DeliveryError(f"the file is over media.max_bytes ({limit})", permanent=True)
            if announced is not None and size > announced:
                raise DeliveryError(f"the file is larger than the {announced} bytes Graph announced")
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest, size
