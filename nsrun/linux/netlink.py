"""Netlink work: rtnetlink through nsrun.linux.rtnl, the few helpers every resource uses.

`IPRoute` is `rtnl.Rtnl`, nsrun's own synchronous rtnetlink socket (see its docstring
for why not pyroute2's IPRoute). `pyroute2()` imports pyroute2 for what rtnl does
not cover, generic netlink (kernel WireGuard), without running the package's __init__, which
loads every module of the library (IPDB, NDB, conntrack, wifi...).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

from nsrun.linux import rtnl


IPRoute = rtnl.Rtnl
NetlinkError = rtnl.NetlinkError


def pyroute2() -> None:
    """Make `import pyroute2.X` load X alone, not the package's __init__ (~130 ms)."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is not None and spec.submodule_search_locations:
        shell = types.ModuleType("pyroute2")
        shell.__path__ = list(spec.submodule_search_locations)
        shell.__spec__ = spec
        shell.__file__ = spec.origin
        sys.modules["pyroute2"] = shell


def errno_of(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def present(ipr: Any, ifname: str) -> int:
    """The index of IFNAME, which the step before made here."""
    idx = index(ipr, ifname)
    if idx is None:
        from nsrun.errors import NsrunError

        raise NsrunError(f"the link {ifname} is not in this namespace")
    return idx


def addresses(ipr: Any, idx: int) -> list[str]:
    out = []
    for a in ipr.get_addr(index=idx):
        out.append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
    return out
