"""Issue 12, point 7, in the lab: CMD under sudo's reduced environment sees the caller's
desktop session (nsrun.desktop); which session is handed out: tests/unit/test_desktop_session.py."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

from nsrun.process import desktop


SHOW = 'for v in XDG_RUNTIME_DIR WAYLAND_DISPLAY DBUS_SESSION_BUS_ADDRESS PULSE_SERVER DISPLAY; do eval "echo $v=\\${$v-unset}"; done'

MAKE_SESSION = r"""
import os, socket, sys
uid = int(sys.argv[1]); d = f"/run/user/{uid}"
os.mkdir(d, 0o700); os.chown(d, uid, uid)
os.mkdir(f"{d}/pulse", 0o700); os.chown(f"{d}/pulse", uid, uid)
for name in ("wayland-0", "bus", "pulse/native"):
    s = socket.socket(socket.AF_UNIX); s.bind(f"{d}/{name}"); s.close(); os.lchown(f"{d}/{name}", uid, uid)
"""


def test_cmd_under_sudo_sees_the_callers_session(lab):
    """Acceptance 7: /run/user/UID (a private tmpfs here) holds a Wayland-like, a bus and a
    pulse-like socket; with sudo's reduced environment CMD sees the four variables pointing
    there, DISPLAY as sudo kept it; as -u root it sees none of them."""
    who = pwd.getpwnam("nobody")
    made = not os.path.isdir("/run/user")
    os.makedirs("/run/user", exist_ok=True)
    try:
        script = (f"mount -t tmpfs -o mode=0755 nsrun-test /run/user && {sys.executable} -c '{MAKE_SESSION}' {who.pw_uid} && "
                  "exec \"$@\"")
        env = {k: v for k, v in lab.env.items() if k not in desktop.VARIABLES}
        sudo = {"SUDO_UID": str(who.pw_uid), "SUDO_GID": str(who.pw_gid), "SUDO_USER": who.pw_name, "DISPLAY": ":7"}

        def run(*args: str) -> dict[str, str]:
            r = subprocess.run(["unshare", "-m", "--propagation", "slave", "sh", "-c", script, "sh",
                                *lab.nsrun_argv("-p", "isolated", *args, "--", "sh", "-c", SHOW)],
                               env={**env, **sudo}, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            return dict(line.split("=", 1) for line in r.stdout.splitlines())

        d = f"/run/user/{who.pw_uid}"
        assert run() == {"XDG_RUNTIME_DIR": d, "WAYLAND_DISPLAY": "wayland-0",
                         "DBUS_SESSION_BUS_ADDRESS": f"unix:path={d}/bus",
                         "PULSE_SERVER": f"unix:{d}/pulse/native", "DISPLAY": ":7"}
        assert run("-u", "root") == {"XDG_RUNTIME_DIR": "unset", "WAYLAND_DISPLAY": "unset",
                                     "DBUS_SESSION_BUS_ADDRESS": "unset", "PULSE_SERVER": "unset",
                                     "DISPLAY": ":7"}
    finally:
        if made:
            os.rmdir("/run/user")
