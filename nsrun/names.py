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
CNI_PREFIX = "nsrun-cni-"
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


HOST_VETH_CHOICES = 8


def host_veth(name: str, choice: int = 0) -> str:
    """The host end of NAME's veth pair: 'nsr' + 10 hex digits (13 bytes); CHOICE picks one
    of NAME's HOST_VETH_CHOICES derived names (0, the first choice, is the name every release
    has derived).

    Why a sequence of choices rather than a derivation without collisions: a link name has at
    most 15 bytes, a namespace name 64 characters, so no derivation maps every name to a
    distinct link name; 40 bits of hash make a collision rare (a birthday search finds one in
    seconds: `adv82404` and `adv142d6d` both derive `nsr4f455dedd8`), not impossible. So the
    veth step tries NAME's choices in order and takes the first that no link holds (the
    kernel refuses the others with EEXIST, atomically: no check-then-create race); the name
    taken is in NAME's record, and the alias `nsrun:NAME` on the link says whose it is, for
    teardown (which never deletes a link whose alias names another namespace) and for gc
    (which takes a link as NAME's when its alias says so and its name is one of NAME's
    choices). Two names collide on every choice with odds of 2**-320.
    """
    import hashlib

    data = name.encode() if choice == 0 else name.encode() + b"\0" + str(choice).encode()
    return HOST_VETH_PREFIX + hashlib.blake2s(data, digest_size=5).hexdigest()


def host_veth_choices(name: str) -> list[str]:
    """NAME's host veth names, in the order the veth step tries them."""
    return [host_veth(name, i) for i in range(HOST_VETH_CHOICES)]


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


# -- CNI attachments -------------------------------------------------------------------------

# CNI_CONTAINERID as the spec has it: an alphanumeric, then alphanumerics, '_', '.' and '-'.
_CONTAINER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CONTAINER_MAX = 1024  # the spec sets no limit; a runtime's ids are 64 hex digits or a UUID


def container_problem(container: str) -> str | None:
    """Why CONTAINER cannot be a CNI container id, or None when it can."""
    if not container:
        return "is empty"
    if len(container) > CONTAINER_MAX:
        return f"is {len(container)} characters long; nsrun takes at most {CONTAINER_MAX}"
    if not _CONTAINER_RE.fullmatch(container):
        return "must start with a letter or digit, then letters, digits, '_', '.' and '-'"
    return None


def cni_name(container: str, ifname: str) -> str:
    """The name of the CNI attachment (CONTAINER, IFNAME): its record, lock, lease owner and
    the names derived from it (host veth, WireGuard interface). 'nsrun-cni-' + 16 hex digits
    (26 characters: a valid namespace name, never an ephemeral one's); 64 bits of hash, so
    two attachments share a name with odds of 2**-64 per pair, and the record names the
    container and interface it is for, which every lookup compares."""
    import hashlib

    digest = hashlib.blake2s(container.encode() + b"\0" + ifname.encode(), digest_size=8).hexdigest()
    return CNI_PREFIX + digest


def is_cni_name(name: str) -> bool:
    return (name.startswith(CNI_PREFIX) and len(name) == len(CNI_PREFIX) + 16
            and all(c in "0123456789abcdef" for c in name[len(CNI_PREFIX):]))
