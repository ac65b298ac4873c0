"""What the test suite needs from the machine beyond Python, found or installed on first use,
so `make test` works on a machine with only Python 3.11+.

Chromium for the browser tests, in order: Debian's `chromium` on PATH; Playwright's own
Chromium when already downloaded; Debian's package installed with apt-get when this user may
install packages (root, or sudo without a password); Playwright's own download. The
`openssl` command for the TLS tests: on PATH, else Debian's package the same way. Only
when all of these fail is there an error, of one line, saying how to get it.

Run as a script it provisions both and prints what it found (or the error).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

INSTALL_TIMEOUT = 900  # seconds; apt-get on a slow mirror takes a few minutes
HOW_TO_GET_CHROMIUM = (
    "the browser tests need Chromium and none could be installed: as root run"
    " `apt-get install chromium`, or run `.venv/bin/python -m playwright install chromium`"
)
HOW_TO_GET_OPENSSL = (
    "the TLS tests need the openssl command and it could not be installed: as root run `apt-get install openssl`"
)
PLAYWRIGHT_PATH = (
    "from playwright.sync_api import sync_playwright\n"
    "with sync_playwright() as p:\n"
    "    print(p.chromium.executable_path)\n"
)


class Missing(Exception):
    """A tool could not be found or installed; the message says how to get it."""


def note(message: str) -> None:
    """Progress for the person waiting: pytest captures stderr, so write past it."""
    print(f"provisioning: {message}", file=sys.__stderr__, flush=True)


def debian_chromium(env: dict[str, str]) -> str | None:
    return shutil.which("chromium", path=env.get("PATH", ""))


def playwright_chromium(env: dict[str, str]) -> str | None:
    """Playwright's own Chromium when it has been downloaded; else None."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", PLAYWRIGHT_PATH], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = done.stdout.strip()
    return path if done.returncode == 0 and path and os.access(path, os.X_OK) else None


def apt_prefix(env: dict[str, str], euid: int) -> list[str] | None:
    """How to run apt-get with the right to install: [] as root, ['sudo', '-n'] when sudo
    needs no password, None when packages cannot be installed (or there is no apt-get)."""
    path = env.get("PATH", "")
    if shutil.which("apt-get", path=path) is None:
        return None
    if euid == 0:
        return []
    sudo = shutil.which("sudo", path=path)
    if sudo is None:
        return None
    try:
        allowed = subprocess.run([sudo, "-n", "true"], env=env, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [sudo, "-n"] if allowed.returncode == 0 else None


def run_quietly(args: list[str], env: dict[str, str]) -> bool:
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        note(f"{' '.join(args)} failed: {exc}")
        return False
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        reason = next((line for line in lines if line.startswith(("Error", "E:"))), lines[-1])
        note(f"{' '.join(args)} failed (exit status {done.returncode}): {reason}")
    return done.returncode == 0


def apt_install(package: str, env: dict[str, str], euid: int) -> bool:
    """Install a Debian package when this user may; False when not allowed or it failed."""
    prefix = apt_prefix(env, euid)
    if prefix is None:
        return False
    note(f"installing Debian's {package} with apt-get (once; a minute or two)")
    apt_env = {**env, "DEBIAN_FRONTEND": "noninteractive"}
    apt = shutil.which("apt-get", path=env.get("PATH", "")) or "apt-get"
    if not run_quietly([*prefix, apt, "update", "-qq"], apt_env):
        return False
    return run_quietly([*prefix, apt, "install", "-y", "-qq", "--no-install-recommends", package], apt_env)


def install_with_playwright(env: dict[str, str]) -> str | None:
    note("downloading Playwright's Chromium (once)")
    if not run_quietly([sys.executable, "-m", "playwright", "install", "chromium"], env):
        return None
    return playwright_chromium(env)


def chromium_executable(env: dict[str, str] | None = None, euid: int | None = None) -> str:
    """The path of a Chromium to launch, installing one if needed; Missing when none can be had.

    `env` (PATH above all) and `euid` default to this process's own.
    """
    env = dict(os.environ if env is None else env)
    euid = os.geteuid() if euid is None else euid
    found = debian_chromium(env) or playwright_chromium(env)
    if found:
        return found
    if apt_install("chromium", env, euid):
        found = debian_chromium(env)
    found = found or install_with_playwright(env)
    if found:
        return found
    raise Missing(HOW_TO_GET_CHROMIUM)


def openssl_command(env: dict[str, str] | None = None, euid: int | None = None) -> str:
    """The path of the openssl command, installing Debian's package if needed; Missing when it cannot."""
    env = dict(os.environ if env is None else env)
    euid = os.geteuid() if euid is None else euid
    path = env.get("PATH", "")
    found = shutil.which("openssl", path=path)
    if found is None and apt_install("openssl", env, euid):
        found = shutil.which("openssl", path=path)
    if found is None:
        raise Missing(HOW_TO_GET_OPENSSL)
    return found


if __name__ == "__main__":
    try:
        print(chromium_executable())
        print(openssl_command())
    except Missing as exc:
        sys.exit(f"wahook: {exc}")
