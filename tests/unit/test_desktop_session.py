"""Issue 12, point 7: the caller's desktop session for CMD under sudo (nsrun.desktop): what
is handed out, and that nothing of another user's is. CMD seeing it, in the lab:
tests/lab/test_desktop_session.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import IS_ROOT
from nsrun.process import desktop

root_only = pytest.mark.skipif(not IS_ROOT, reason="making files of other users needs root")
UID = 4242  # a user that owns nothing on the machine
OTHER = 4343


def _sock(path: Path, uid: int) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
    os.lchown(path, uid, uid)


def session(root: Path, uid: int = UID, mode: int = 0o700, wayland: str = "wayland-0") -> Path:
    d = root / str(uid)
    d.mkdir(mode=mode)
    os.chmod(d, mode)
    os.chown(d, uid, uid)
    _sock(d / wayland, uid)
    _sock(d / "bus", uid)
    (d / "pulse").mkdir()
    os.chown(d / "pulse", uid, uid)
    _sock(d / "pulse" / "native", uid)
    return d


@root_only
def test_sudo_stripped_environment_gets_the_four_variables(tmp_path):
    d = session(tmp_path)
    env = {"DISPLAY": ":0", "XAUTHORITY": "/home/u/.Xauthority", "PATH": "/usr/bin"}
    assert desktop.session_env(env, UID, str(tmp_path)) == {
        "XDG_RUNTIME_DIR": str(d), "WAYLAND_DISPLAY": "wayland-0",
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={d}/bus", "PULSE_SERVER": f"unix:{d}/pulse/native"}
    desktop.apply(env, UID, str(tmp_path))
    assert env["DISPLAY"] == ":0" and env["XAUTHORITY"] == "/home/u/.Xauthority"  # as sudo keeps them


@root_only
@pytest.mark.parametrize("uid", [None, 0])
def test_never_for_root(tmp_path, uid):
    session(tmp_path, uid=0)
    assert desktop.session_env({}, uid, str(tmp_path)) == {}


@root_only
def test_another_users_directory_is_never_used(tmp_path):
    d = tmp_path / str(UID)
    d.mkdir(mode=0o700)
    os.chown(d, OTHER, OTHER)  # /run/user/UID, but not UID's
    _sock(d / "wayland-0", OTHER)
    assert desktop.session_env({}, UID, str(tmp_path)) == {}


@root_only
def test_a_directory_others_may_write_or_a_link_is_refused(tmp_path):
    session(tmp_path, mode=0o777)
    assert desktop.session_env({}, UID, str(tmp_path)) == {}
    real = session(tmp_path, uid=OTHER)
    os.symlink(real, tmp_path / "4444")
    assert desktop.session_env({}, 4444, str(tmp_path)) == {}


@root_only
def test_sockets_of_another_user_or_not_sockets_are_left_out(tmp_path):
    d = tmp_path / str(UID)
    d.mkdir(mode=0o700)
    os.chown(d, UID, UID)
    _sock(d / "wayland-0", OTHER)
    (d / "bus").write_text("not a socket")
    os.chown(d / "bus", UID, UID)
    (d / "pulse").mkdir()
    os.chown(d / "pulse", OTHER, OTHER)
    _sock(d / "pulse" / "native", UID)
    os.symlink("/tmp/x", d / "wayland-1")
    assert desktop.session_env({}, UID, str(tmp_path)) == {"XDG_RUNTIME_DIR": str(d)}


@root_only
def test_variables_present_are_kept_but_not_a_foreign_runtime_dir(tmp_path):
    d = session(tmp_path, wayland="wayland-1")
    env = {"WAYLAND_DISPLAY": "wayland-9", "PULSE_SERVER": "tcp:host"}
    assert desktop.session_env(env, UID, str(tmp_path)) == {
        "XDG_RUNTIME_DIR": str(d), "DBUS_SESSION_BUS_ADDRESS": f"unix:path={d}/bus"}
    theirs = session(tmp_path, uid=OTHER)
    changes = desktop.session_env({"XDG_RUNTIME_DIR": str(theirs)}, UID, str(tmp_path))
    assert changes["XDG_RUNTIME_DIR"] == str(d)
    assert desktop.session_env({"XDG_RUNTIME_DIR": str(d)}, UID, str(tmp_path)).get("XDG_RUNTIME_DIR") is None
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "nowhere")}
    desktop.apply(env, 4545, str(tmp_path))  # no runtime dir of its own: the stray one goes
    assert env == {}


@root_only
@settings(max_examples=60, deadline=None)
@given(owner=st.sampled_from([UID, OTHER, 0]), mode=st.sampled_from([0o700, 0o750, 0o770, 0o755, 0o777]),
       sock_owner=st.sampled_from([UID, OTHER]), preset=st.sampled_from([None, "mine", "theirs"]))
def test_nothing_handed_out_belongs_to_another_user(tmp_path_factory, owner, mode, sock_owner, preset):
    root = tmp_path_factory.mktemp("run")
    d = root / str(UID)
    d.mkdir()
    os.chmod(d, mode)
    os.chown(d, owner, owner)
    _sock(d / "wayland-0", sock_owner)
    _sock(d / "bus", sock_owner)
    env = {}
    if preset == "mine":
        env["XDG_RUNTIME_DIR"] = str(d)
    elif preset == "theirs":
        env["XDG_RUNTIME_DIR"] = str(session(root, uid=OTHER))
    desktop.apply(env, UID, str(root))
    rundir = env.get("XDG_RUNTIME_DIR")
    if rundir is not None:
        st_ = os.lstat(rundir)
        assert st_.st_uid == UID and not st_.st_mode & 0o022
    for key in ("WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS"):
        if key in env:
            assert rundir is not None
            path = f"{rundir}/{env[key]}" if key == "WAYLAND_DISPLAY" else env[key].split("=", 1)[1]
            assert os.lstat(path).st_uid == UID
