"""Per-namespace kernel settings under /proc/sys (they follow the opener's namespace)."""

from __future__ import annotations


def _path(key: str) -> str:
    # The dotted form (net.ipv4.ip_forward) or the path form (net/ipv4/conf/br0.10/rp_filter:
    # interface names may hold dots, which stay).
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


def read(key: str) -> str | None:
    try:
        with open(_path(key)) as fh:
            return fh.read().strip()
    except OSError:
        return None


def write(key: str, value: str) -> None:
    with open(_path(key), "w") as fh:
        fh.write(value)


def iface_key(ifname: str, setting: str) -> str:
    # Interface names may contain '.', which the dotted form would split.
    return f"net/ipv4/conf/{ifname}/{setting}"
