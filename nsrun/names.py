"""Names: what a namespace may be called, and the names derived from it.

Every kernel object nsrun makes for a namespace carries a name derived from the
namespace's name, so `nsrun gc` can find each piece again without any record in memory.
"""

from __future__ import annotations

import os
import re

from nsrun.errors import UsageError

NAME_MAX = 64
IFNAME_MAX = 15  # bytes, IFNAMSIZ - 1
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,%d}" % (NAME_MAX - 1))
# Linux refuses '/', ':' and white space in interface names, and '.'/'..' alone.
_IFNAME_BAD = re.compile(r"[\s/:]")
# Names dev_valid_name() passes but link creation refuses (EINVAL): the directories of
# /proc/sys/net/ipv4/conf that are not interfaces.
RESERVED_IFNAMES = ("all", "default")

EPHEMERAL_PREFIX = "nsrun-"
HOST_VETH_PREFIX = "nsr"
WG_PREFIX = "nswg"
INNER_IFNAME = "eth0"
IFALIAS_PREFIX = "nsrun:"


def check_name(name: str) -> str:
    """Return NAME if it is a valid namespace name, else raise UsageError.

    Valid: 1 to 64 characters of [A-Za-z0-9_.-], not starting with '.' or '-'. Such a
    name can never escape /run/netns or the state directory.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(  # repr: one line, control characters escaped (once)
            f"invalid namespace name {name!r}: use 1 to {NAME_MAX} characters of "
            "A-Z a-z 0-9 _ . - not starting with '.' or '-'"
        )
    return name


def ifname_problem(ifname: str) -> str | None:
    """Why IFNAME cannot be a Linux interface name, or None when it can."""
    if not ifname:
        return "is empty"
    size = len(ifname.encode(errors="surrogatepass"))
    if size > IFNAME_MAX:
        return f"is {size} bytes long; interface names have at most {IFNAME_MAX}"
    if ifname in (".", "..") or _IFNAME_BAD.search(ifname):
        return "is not a valid interface name (no '/', ':' or white space)"
    # '%' makes the kernel treat the name as a pattern: "br%d" creates br0 (or br1...), a link
    # nsrun would never find again; any other '%' is refused (EINVAL).
    if "%" in ifname:
        return "contains '%', which the kernel takes as a pattern for a name of its own choosing"
    if ifname in RESERVED_IFNAMES:
        return f"is reserved by the kernel (net.ipv4.conf.{ifname} is not an interface)"
    # NUL would cut the name short in the kernel (another interface than the one checked),
    # other control characters garble output, and lone surrogates cannot be encoded.
    if not ifname.isprintable():
        return "is not a valid interface name (no control or unprintable characters)"
    # The kernel's isspace() also counts byte 0xA0, which UTF-8 uses inside characters like 'à'.
    if 0xA0 in ifname.encode():
        return "is not a valid interface name (the kernel reads its byte 0xA0 as white space)"
    return None


def ephemeral_name() -> str:
    # os.urandom, not secrets: secrets loads OpenSSL into the long-lived supervisor.
    return EPHEMERAL_PREFIX + os.urandom(4).hex()


def is_ephemeral(name: str) -> bool:
    return name.startswith(EPHEMERAL_PREFIX) and len(name) == len(EPHEMERAL_PREFIX) + 8


def host_veth(name: str) -> str:
    """The host end of NAME's veth pair: 'nsr' + 10 hex digits (13 bytes)."""
    import hashlib

    return HOST_VETH_PREFIX + hashlib.blake2s(name.encode(), digest_size=5).hexdigest()


def is_host_veth(ifname: str) -> bool:
    return (
        ifname.startswith(HOST_VETH_PREFIX)
        and len(ifname) == len(HOST_VETH_PREFIX) + 10
        and all(c in "0123456789abcdef" for c in ifname[len(HOST_VETH_PREFIX):])
    )


def ifalias(name: str) -> str:
    """The alias set on the host veth, so `ip link` and `gc` can tell whose it is."""
    return IFALIAS_PREFIX + name


def wg_ifname(name: str) -> str:
    """NAME's WireGuard interface: 'nswg' + 10 hex digits (14 bytes). It keeps this name in
    the namespace, since userspace WireGuard names its configuration socket after it."""
    import hashlib

    return WG_PREFIX + hashlib.blake2s(name.encode(), digest_size=5).hexdigest()


def is_wg_ifname(ifname: str) -> bool:
    return (
        ifname.startswith(WG_PREFIX)
        and len(ifname) == len(WG_PREFIX) + 10
        and all(c in "0123456789abcdef" for c in ifname[len(WG_PREFIX):])
    )
