"""Per-namespace kernel settings under /proc/sys (they follow the opener's namespace)."""

from __future__ import annotations


def _path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


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
