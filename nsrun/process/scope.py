"""A transient systemd scope for the program the service starts for a caller without root,
in that caller's own slice: what `systemd-run --scope --slice=user-UID.slice` makes.

Forked by the service, CMD would otherwise live in the service's cgroup (or a run cgroup
under it): the user's slice's TasksMax= and MemoryMax= (logind's per-user limits) would no
longer apply to it, and its accounting would be the service's. So the service asks the
system manager (org.freedesktop.systemd1.Manager.StartTransientUnit, over the system bus,
with jeepney) for `nsrun-NAME-XXXXXXXX.scope` in `user-UID.slice` holding CMD's process
(PIDs), and waits until the kernel shows the process there, before CMD is executed: what
CMD forks stays in the scope. The scope is collected when it empties, failed or not.

Where systemd is not the init system (no /run/systemd/system: a container, the tests' lab
host) nothing is asked, and CMD goes where it went before (nsrun.service.userpath: the run's
cgroup under the service's). When the manager cannot be reached or refuses, the same, and
the service logs why. Standard library and jeepney (imported only when asked).
"""

from __future__ import annotations

import os
import secrets
import select
import time
from typing import Any

from nsrun.linux import cgroup

DEFAULT_BUS = "unix:path=/run/dbus/system_bus_socket"
MANAGER = ("/org/freedesktop/systemd1", "org.freedesktop.systemd1", "org.freedesktop.systemd1.Manager")
SIGNATURE = "ssa(sv)a(sa(sv))"  # name, mode, properties, auxiliary units
TIMEOUT = 5.0


def booted() -> bool:
    """Whether systemd is the init system here (sd_booted(3))."""
    return os.path.isdir("/run/systemd/system")


def unit_name(ns: str) -> str:
    """A unit name of its own for a CMD in namespace NS (namespace names are valid in one)."""
    return f"nsrun-{ns}-{secrets.token_hex(4)}.scope"


def properties(uid: int, pid: int, description: str) -> list[tuple[str, tuple[str, Any]]]:
    """The scope's properties, as systemd-run --scope --slice=user-UID.slice sets them."""
    return [
        ("Description", ("s", description)),
        ("Slice", ("s", f"user-{uid}.slice")),
        ("PIDs", ("au", [pid])),
        ("CollectMode", ("s", "inactive-or-failed")),  # gone once empty, even when it failed
    ]


def start_message(unit: str, uid: int, pid: int, description: str) -> Any:
    """The StartTransientUnit call (jeepney's Message) for UNIT holding PID in UID's slice."""
    from jeepney import DBusAddress, new_method_call

    path, bus_name, interface = MANAGER
    return new_method_call(DBusAddress(path, bus_name=bus_name, interface=interface), "StartTransientUnit",
                           SIGNATURE, (unit, "fail", properties(uid, pid, description), []))


def _exited(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def start(pid: int, pidfd: int, uid: int, ns: str, bus: str | None = None,
          timeout: float = TIMEOUT) -> tuple[str | None, str | None]:
    """Put process PID (PIDFD: it, unreaped) into a new scope in UID's slice: (the scope's
    cgroup directory, None) once the kernel shows PID in it; (None, why not) otherwise."""
    unit = unit_name(ns)
    try:
        from jeepney.io.blocking import open_dbus_connection
        from jeepney.wrappers import DBusErrorResponse, unwrap_msg
    except ImportError:
        return None, "the jeepney module is missing"
    try:
        conn = open_dbus_connection(bus=bus or DEFAULT_BUS, auth_timeout=timeout)
    except Exception as exc:  # no socket, refused, authentication failed, bad address
        return None, f"cannot connect to the system bus: {exc}"
    try:
        reply = conn.send_and_get_reply(start_message(unit, uid, pid, f"nsrun: a program of uid {uid} in {ns}"),
                                        timeout=timeout)
        unwrap_msg(reply)
    except DBusErrorResponse as exc:
        return None, f"the system manager refused {unit}: {exc.name}: {' '.join(map(str, exc.data))}"
    except (OSError, TimeoutError) as exc:
        return None, f"the system bus: {exc}"
    finally:
        conn.close()
    mnt = cgroup.mountpoint()
    deadline = time.monotonic() + timeout
    while True:  # the job attaches PID when it runs: wait, so that what CMD forks is in the scope
        where = cgroup.of_pid(pid)
        if mnt is not None and where is not None and where.endswith("/" + unit):
            return os.path.join(mnt, where.lstrip("/")), None
        if _exited(pidfd):
            return None, "the program ended before it was in its scope"
        if time.monotonic() > deadline:
            return None, f"{unit} was made, but the program was not in it after {timeout:g} s"
        time.sleep(0.002)
