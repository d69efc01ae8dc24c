"""The desktop session of the user CMD runs as, which sudo's environment reset strips.

`sudo nsrun -- firefox` runs firefox as the caller, but sudo has removed XDG_RUNTIME_DIR,
WAYLAND_DISPLAY, DBUS_SESSION_BUS_ADDRESS and PULSE_SERVER (it keeps DISPLAY and
XAUTHORITY, which are left as they are): without them a desktop program has no Wayland
display, no session bus and no sound. They are put back from what exists: the user's
/run/user/UID when it is a real directory (not a link) that belongs to that user and no one
else may write, and each socket there only when it is a socket of that user. Never for
root (`-u root`, or no sudo caller), never pointing at another user's files. Variables the
environment already has are kept, except an XDG_RUNTIME_DIR that is not the user's own.

Pure logic over the file system (RUNTIME_ROOT can point elsewhere for tests); standard
library only, as it runs on the path to exec.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

RUNTIME_ROOT = "/run/user"
VARIABLES = ("XDG_RUNTIME_DIR", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "PULSE_SERVER")


def _owned(path: str, uid: int, kind: int) -> bool:
    """PATH is of KIND (stat.S_IFDIR, S_IFSOCK...), not a link, and belongs to UID."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_IFMT(st.st_mode) == kind and st.st_uid == uid


def runtime_dir(uid: int, root: str = RUNTIME_ROOT) -> str | None:
    """UID's runtime directory when it is safe to hand to UID's program, else None."""
    path = f"{root}/{uid}"
    if not _owned(path, uid, stat.S_IFDIR):
        return None
    if os.lstat(path).st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return path


def _wayland(rundir: str, uid: int) -> str | None:
    """The Wayland display socket: wayland-0 when there, else the first wayland-N."""
    try:
        entries = os.listdir(rundir)
    except OSError:
        return None
    names = sorted((n for n in entries if n.startswith("wayland-") and n[8:].isdigit()),
                   key=lambda n: int(n[8:]))
    for name in names:
        if _owned(f"{rundir}/{name}", uid, stat.S_IFSOCK):
            return name
    return None


def session_env(env: Mapping[str, str], uid: int | None, root: str = RUNTIME_ROOT) -> dict[str, str | None]:
    """What to change in ENV for a CMD running as UID: name -> value, or None to remove.
    Empty for root (UID None or 0)."""
    if not uid:
        return {}
    changes: dict[str, str | None] = {}
    have = env.get("XDG_RUNTIME_DIR")
    if have is not None and runtime_dir_of(have) != uid:  # not the user's own: never pass it on
        changes["XDG_RUNTIME_DIR"] = None
        have = None
    rundir = have or runtime_dir(uid, root)
    if rundir is None:
        return changes
    if have is None:
        changes["XDG_RUNTIME_DIR"] = rundir
    if "WAYLAND_DISPLAY" not in env:
        wayland = _wayland(rundir, uid)
        if wayland:
            changes["WAYLAND_DISPLAY"] = wayland
    if "DBUS_SESSION_BUS_ADDRESS" not in env and _owned(f"{rundir}/bus", uid, stat.S_IFSOCK):
        changes["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={rundir}/bus"
    if ("PULSE_SERVER" not in env and _owned(f"{rundir}/pulse", uid, stat.S_IFDIR)
            and _owned(f"{rundir}/pulse/native", uid, stat.S_IFSOCK)):
        changes["PULSE_SERVER"] = f"unix:{rundir}/pulse/native"
    return changes


def runtime_dir_of(path: str) -> int | None:
    """The uid PATH belongs to, when PATH is a directory (not a link) no one else may write."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return st.st_uid


def apply(env: dict[str, str], uid: int | None, root: str = RUNTIME_ROOT) -> None:
    """Change ENV in place per session_env()."""
    for key, value in session_env(env, uid, root).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
