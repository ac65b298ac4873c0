"""How the browser tests get their Chromium (tests/provision.py), decided on a PATH
without the machine's own chromium, with a stand-in apt-get and sudo that really run
(and fail as the real ones do), and Playwright's real download pointed at a closed port."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

import provision
from conftest import free_port

FAKE_CHROMIUM = "#!/bin/sh\necho 'Chromium 140.0 built on Debian'\n"


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class Machine:
    """A PATH of our own: a bin folder with only what a test puts there, no network for Playwright."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "apt.log"
        self.env = {
            "PATH": str(self.bin),
            "HOME": str(tmp_path),
            # Playwright finds no browser of its own and cannot download one.
            "PLAYWRIGHT_BROWSERS_PATH": str(tmp_path / "ms-playwright"),
            "PLAYWRIGHT_DOWNLOAD_HOST": f"http://127.0.0.1:{free_port()}",
        }

    def apt_get(self, works: bool) -> None:
        """An apt-get that logs its arguments; it installs the package's command into bin
        (a stand-in that prints a version), or fails as apt-get does on a machine whose
        package lists lack it."""
        command = f"{self.bin}/$5"  # install -y -qq --no-install-recommends PACKAGE
        install = f"printf '{FAKE_CHROMIUM}' > {command}; /bin/chmod +x {command}"
        fail = 'echo "E: Unable to locate package $5" >&2; exit 100'
        executable(
            self.bin / "apt-get",
            f'#!/bin/sh\necho "$(id -u) $DEBIAN_FRONTEND $*" >> {self.log}\n'
            f'if [ "$1" = install ]; then {install if works else fail}; fi\n',
        )

    def sudo(self, allowed: bool) -> None:
        # Like sudo's secure_path: the command is looked up on the system's PATH.
        body = 'shift; PATH=/usr/bin:/bin exec "$@"' if allowed else "echo 'sudo: a password is required' >&2; exit 1"
        executable(self.bin / "sudo", f'#!/bin/sh\n[ "$1" = -n ] || exit 2\n{body}\n')

    def apt_calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def machine(tmp_path):
    return Machine(tmp_path)


def test_chromium_on_path_is_used_without_installing_anything(machine):
    chromium = executable(machine.bin / "chromium", FAKE_CHROMIUM)
    machine.apt_get(works=True)
    assert provision.chromium_executable(machine.env, euid=0) == str(chromium)
    assert machine.apt_calls() == []


def test_root_without_chromium_installs_debians_package(machine):
    machine.apt_get(works=True)
    found = provision.chromium_executable(machine.env, euid=0)
    assert found == str(machine.bin / "chromium")
    calls = machine.apt_calls()
    assert [c.split(" ", 2)[2] for c in calls] == ["update -qq", "install -y -qq --no-install-recommends chromium"]
    assert all(" noninteractive " in c for c in calls)


def test_a_user_with_passwordless_sudo_installs_through_it(machine):
    machine.apt_get(works=True)
    machine.sudo(allowed=True)
    assert provision.chromium_executable(machine.env, euid=1000) == str(machine.bin / "chromium")
    assert len(machine.apt_calls()) == 2


@pytest.mark.parametrize("sudo", ["absent", "asks for a password"])
def test_a_user_who_cannot_install_packages_does_not_run_apt(machine, sudo):
    machine.apt_get(works=True)
    if sudo != "absent":
        machine.sudo(allowed=False)
    with pytest.raises(provision.Missing) as raised:
        provision.chromium_executable(machine.env, euid=1000)
    assert machine.apt_calls() == []
    assert raised.value.args[0] == provision.HOW_TO_GET_CHROMIUM


def test_when_nothing_works_one_line_says_how_to_get_a_browser(machine):
    machine.apt_get(works=False)
    with pytest.raises(provision.Missing) as raised:
        provision.chromium_executable(machine.env, euid=0)
    message = str(raised.value)
    assert "\n" not in message
    assert "apt-get install chromium" in message and "playwright install chromium" in message
    assert len(machine.apt_calls()) == 2  # it tried apt first, then Playwright's download


def test_playwrights_own_browser_is_used_when_downloaded(machine):
    assert provision.playwright_chromium(machine.env) is None
    # Where Playwright keeps a downloaded Chromium, with a stand-in put there.
    where = subprocess.run(
        [sys.executable, "-c", provision.PLAYWRIGHT_PATH],
        env=machine.env,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = Path(where.stdout.strip())
    expected.parent.mkdir(parents=True)
    executable(expected, FAKE_CHROMIUM)
    machine.apt_get(works=True)
    assert provision.chromium_executable(machine.env, euid=0) == str(expected)
    assert machine.apt_calls() == []


def test_openssl_on_path_is_used_and_otherwise_installed_by_root(machine):
    machine.apt_get(works=True)
    assert provision.openssl_command(machine.env, euid=0) == str(machine.bin / "openssl")
    assert [c.split(" ", 2)[2] for c in machine.apt_calls()][-1].endswith("--no-install-recommends openssl")
    calls = len(machine.apt_calls())
    assert provision.openssl_command(machine.env, euid=0) == str(machine.bin / "openssl")
    assert len(machine.apt_calls()) == calls  # found this time: nothing run


def test_no_openssl_and_no_right_to_install_is_one_line(machine):
    machine.apt_get(works=True)
    with pytest.raises(provision.Missing) as raised:
        provision.openssl_command(machine.env, euid=1000)
    assert str(raised.value) == provision.HOW_TO_GET_OPENSSL
    assert machine.apt_calls() == []
