"""firewalld, driven through its D-Bus API: a nat bridge goes into a zone that forwards.

Where firewalld manages the network namespace nsrun works in, its nf_tables chains are its
own: it rewrites them on every reload (`FlushAllOnReload=yes`, Debian's and Fedora's
default), and an accept nsrun inserted there is gone after a `firewall-cmd --reload`
without a word. firewalld's own way to let an interface's traffic through is a zone: so a
nat bridge is bound, at runtime only (never in its permanent configuration), to the zone
`trusted` (target ACCEPT: what comes in on the bridge is accepted, forwarded or for the
host, and firewalld's own `ct state established,related` rule lets the replies back).
Its removal puts the interface back where it was (out of any zone, or into the zone it had
at runtime before). Both go through `org.fedoraproject.FirewallD1.zone`:
getZoneOfInterface, changeZoneOfInterface, removeInterface.

A reload with `FlushAllOnReload=yes` drops runtime interface bindings too: each setup on a
bridge whose record says it was bound checks the binding and binds it again when it is gone
(nsrun.engine.resources.opening), and `nsrun doctor` names a bridge in use whose binding is gone.

Which firewalld: the one on the system bus (its address given by the caller; the engine
reads no environment), and only when it runs in this very network namespace: the bus tells
the process id of the name's owner, and its /proc/PID/ns/net must be ours (a firewalld in
another namespace, or one whose process is not visible here, manages some other ruleset).

The client is jeepney (pure Python, no C library, no GLib main loop; imported only on a
host where a firewalld table exists). nsrun never runs firewall-cmd.
"""

from __future__ import annotations

import os
from typing import Any

from nsrun.errors import NsrunError

DEFAULT_BUS = "unix:path=/run/dbus/system_bus_socket"
NAME = "org.fedoraproject.FirewallD1"
PATH = "/org/fedoraproject/FirewallD1"
ZONE_IFACE = NAME + ".zone"
ZONE = "trusted"  # target ACCEPT: forwards what comes in on its interfaces
TABLES = {("inet", "firewalld"), ("ip", "firewalld"), ("ip6", "firewalld")}  # its nf_tables ruleset
TIMEOUT = 10.0  # firewalld applies a zone change as one nft batch; a loaded box is slow


class Unreachable(NsrunError):
    """No firewalld answers on that bus for this network namespace."""


class Failed(NsrunError):
    """firewalld answered with an error."""


class Client:
    """One connection to the bus, for a few calls (`with Client(bus) as fw:`)."""

    def __init__(self, bus: str) -> None:
        try:
            from jeepney.io.blocking import open_dbus_connection
        except ImportError:
            raise Unreachable("the jeepney module is missing (pip install jeepney)") from None
        try:
            self.conn: Any = open_dbus_connection(bus=bus, auth_timeout=TIMEOUT)
        except Exception as exc:  # no socket, refused, authentication failed, bad address
            raise Unreachable(f"cannot connect to the system bus {bus}: {exc}") from None
        self.bus = bus

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def _call(self, msg: Any) -> tuple[Any, ...]:
        from jeepney.wrappers import DBusErrorResponse, unwrap_msg

        try:
            reply = self.conn.send_and_get_reply(msg, timeout=TIMEOUT)
            return tuple(unwrap_msg(reply))
        except DBusErrorResponse as exc:
            raise Failed(f"{exc.name}: {' '.join(str(a) for a in exc.data)}") from None
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"the system bus {self.bus}: {exc}") from None

    def _zone_call(self, method: str, signature: str, *args: str) -> tuple[Any, ...]:
        from jeepney import DBusAddress, new_method_call

        addr = DBusAddress(PATH, bus_name=NAME, interface=ZONE_IFACE)
        return self._call(new_method_call(addr, method, signature, args))

    def check_ours(self) -> None:
        """Unreachable unless firewalld owns its name on this bus and runs in the network
        namespace of the calling thread."""
        from jeepney.bus_messages import message_bus

        try:
            (has,) = self._call(message_bus.NameHasOwner(NAME))
            if not has:
                raise Unreachable(f"firewalld is not running (no {NAME} on {self.bus})")
            (pid,) = self._call(message_bus.GetConnectionUnixProcessID(NAME))
        except Failed as exc:
            raise Unreachable(str(exc)) from None
        try:
            theirs = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            raise Unreachable(f"firewalld (pid {pid}) is not visible here") from None
        if theirs != os.stat("/proc/thread-self/ns/net").st_ino:
            raise Unreachable(f"firewalld (pid {pid}) manages another network namespace")

    def zone_of(self, iface: str) -> str:
        """The zone IFACE is bound to at runtime, "" when none."""
        (zone,) = self._zone_call("getZoneOfInterface", "s", iface)
        return str(zone)

    def bind(self, iface: str, zone: str = ZONE) -> None:
        self._zone_call("changeZoneOfInterface", "ss", zone, iface)

    def unbind(self, iface: str, zone: str) -> None:
        self._zone_call("removeInterface", "ss", zone, iface)


def reachable(bus: str | None) -> bool:
    """Whether firewalld answers on BUS for this network namespace."""
    if not bus:
        return False
    try:
        with Client(bus) as fw:
            fw.check_ours()
        return True
    except (Unreachable, Failed):
        return False


def has_tables(rs: list[dict[str, Any]]) -> bool:
    """Whether RS (an nf_tables ruleset listing) holds firewalld's tables."""
    return any((t["family"], t["name"]) in TABLES for o in rs if (t := o.get("table")))


def release(bus: str, iface: str, zone: str, previous: str) -> bool:
    """Undo a binding of IFACE to ZONE: IFACE back to PREVIOUS ("" = out of every zone),
    when it is still in ZONE (someone who moved it since has the last word). Idempotent;
    whether it changed anything. A firewalld that no longer runs holds no runtime binding:
    nothing to undo."""
    try:
        fw = Client(bus)
    except Unreachable:
        return False
    with fw:
        try:
            fw.check_ours()
        except Unreachable:
            return False
        if fw.zone_of(iface) != zone:
            return False
        if previous:
            fw.bind(iface, previous)
        else:
            fw.unbind(iface, zone)
        return True


def bound(bus: str, iface: str) -> bool | None:
    """Whether IFACE is bound to ZONE now; None when firewalld cannot be asked (doctor)."""
    try:
        with Client(bus) as fw:
            fw.check_ours()
            return fw.zone_of(iface) == ZONE
    except (Unreachable, Failed):
        return None
