"""Issue 24, item 11: the path to a WireGuard configuration is checked as profiles' and the
policy's are: no symbolic link anywhere on it (the file included), every directory root's
and writable by no one else (a sticky one passes), and the errors name the path, never
what a file the path was pointed at holds.

Whoever owns a directory on the path could otherwise point the configuration at root's
files (the parse error would show their first line) or at another tunnel's identity. Files
are written under pytest's tmp_path only; ownership needs root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nsrun import wgconf
from nsrun.errors import UsageError

GOOD = """[Interface]
PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
Address = 10.2.0.2/32
[Peer]
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
Endpoint = 192.0.2.1:51820
AllowedIPs = 0.0.0.0/0
"""
SECRET = "root-only-secret-line = s3cr3t-value"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="ownership is checked against root when run as root")


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(UsageError) as info:
        wgconf.load(path, lambda host, port: (host, port))
    message = str(info.value)
    assert "\n" not in message and "s3cr3t" not in message and "root-only" not in message, message
    return message


@pytest.fixture
def wgdir(tmp_path: Path) -> Path:
    d = tmp_path / "wg"
    d.mkdir()
    os.chmod(d, 0o700)
    return d


def test_a_good_path_loads(wgdir: Path) -> None:
    assert len(wgconf.load(write(wgdir / "ok.conf", GOOD), lambda h, p: (h, p)).peers) == 1


def test_a_symbolic_link_as_the_file_is_refused(wgdir: Path, tmp_path: Path) -> None:
    """Pointed at a root file (its first line would show in the error), or at another
    tunnel's configuration (its identity): refused either way, naming the path."""
    secret = write(tmp_path / "secret", SECRET + "\n")
    other = write(wgdir / "other.conf", GOOD)
    for target in (secret, other):
        link = wgdir / "mine.conf"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        assert refusal(link) == f"{link}: refused: is a symbolic link"


def test_a_symbolic_link_on_the_way_is_refused(wgdir: Path, tmp_path: Path) -> None:
    write(wgdir / "ok.conf", GOOD)
    via = tmp_path / "via"
    via.symlink_to(wgdir)
    assert refusal(via / "ok.conf") == f"{via / 'ok.conf'}: refused: {via} is a symbolic link"


@root_only
def test_a_directory_another_user_owns_is_refused(wgdir: Path, tmp_path: Path) -> None:
    write(wgdir / "ok.conf", GOOD)
    os.chown(wgdir, 65534, 65534)
    assert refusal(wgdir / "ok.conf") == f"{wgdir / 'ok.conf'}: refused: directory {wgdir} is owned by uid 65534"


@pytest.mark.parametrize("mode", [0o770, 0o772, 0o707, 0o777])
def test_a_directory_others_may_write_is_refused_unless_sticky(wgdir: Path, mode: int) -> None:
    conf = write(wgdir / "ok.conf", GOOD)
    os.chmod(wgdir, mode)
    assert refusal(conf) == (f"{conf}: refused: directory {wgdir} is group- or world-writable "
                             f"(mode {mode:04o}); chmod go-w it")
    os.chmod(wgdir, mode | 0o1000)  # sticky, as /tmp: others cannot replace what is root's
    assert len(wgconf.load(conf, lambda h, p: (h, p)).peers) == 1


def test_a_missing_directory_is_no_such_configuration(tmp_path: Path) -> None:
    assert refusal(tmp_path / "none" / "x.conf") == f"{tmp_path / 'none' / 'x.conf'}: no such WireGuard configuration"
