"""Netlink work through pyroute2, imported only by the commands that change links.

`pyroute2/__init__.py` imports every module of the library (IPDB, NDB, conntrack, wifi...),
~130 ms here. nsrun only needs `pyroute2.iproute.linux`: `IPRoute()` loads that module
without running the package's __init__, which halves the import cost. If that ever fails
(a pyroute2 that is laid out differently), it falls back to the ordinary import.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

_IPRoute: Any = None
_NetlinkError: Any = None


def _load() -> None:
    global _IPRoute, _NetlinkError
    if _IPRoute is not None:
        return
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations:
            shell = types.ModuleType("pyroute2")
            shell.__path__ = list(spec.submodule_search_locations)
            shell.__spec__ = spec
            shell.__file__ = spec.origin
            sys.modules["pyroute2"] = shell
    try:
        from pyroute2.iproute.linux import IPRoute as ipr
        from pyroute2.netlink.exceptions import NetlinkError as nle
    except ImportError:
        sys.modules.pop("pyroute2", None)
        from pyroute2 import IPRoute as ipr  # type: ignore[no-redef]
        from pyroute2 import NetlinkError as nle  # type: ignore[no-redef]
    _IPRoute, _NetlinkError = ipr, nle


def IPRoute() -> Any:
    _load()
    return _IPRoute()


def NetlinkError() -> type[Exception]:
    _load()
    return _NetlinkError  # type: ignore[no-any-return]


def errno_of(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def link_attr(link: Any, name: str) -> Any:
    return link.get_attr(name) if hasattr(link, "get_attr") else link.get(name)


def addresses(ipr: Any, idx: int) -> list[str]:
    out = []
    for a in ipr.get_addr(index=idx):
        out.append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
    return out
