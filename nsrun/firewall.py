"""NAT firewall rules through python-iptables (legacy x_tables), imported only when a rule
must change. Every rule carries the comment `nsrun:BRIDGE:PROFILE`, so it can be found
and removed again from the bridge's name alone. Changes are made under /run/xtables.lock,
the lock the iptables tools take (python-iptables takes none).
"""

from __future__ import annotations

import ctypes.util
import fcntl
import glob
import os
import sys
from typing import Any

XTABLES_LOCK = "/run/xtables.lock"
TAG = "nsrun:"
_iptc: Any = None


def _fast_find_library(original: Any) -> Any:
    """ctypes.util.find_library without its ldconfig/gcc subprocesses, for known libraries."""
    dirs = [d for d in glob.glob("/usr/lib/*-linux-gnu") + ["/usr/lib64", "/usr/lib", "/lib64", "/lib"]
            if os.path.isdir(d)]

    def find(name: str) -> str | None:
        for d in dirs:
            if ".so" in name:  # already a file name (libxtables.so.12)
                if os.path.exists(f"{d}/{name}"):
                    return name
                continue
            found = sorted(glob.glob(f"{d}/lib{name}.so.*"))
            if found:
                return os.path.basename(found[0])
        return original(name)  # type: ignore[no-any-return]

    return find


def load() -> Any:
    """Import python-iptables cheaply: point it at the xtables directory and library version
    (else it runs ldconfig), and skip its distutils probe (which imports setuptools)."""
    global _iptc
    if _iptc is not None:
        return _iptc
    if "XTABLES_LIBDIR" not in os.environ:
        for d in glob.glob("/usr/lib/*/xtables") + ["/usr/lib64/xtables", "/usr/lib/xtables"]:
            if os.path.isfile(f"{d}/libxt_comment.so"):
                os.environ["XTABLES_LIBDIR"] = d
                libs = sorted(glob.glob(f"{os.path.dirname(d)}/libxtables.so.*"), key=len)
                if libs and "PYTHON_IPTABLES_XTABLES_VERSION" not in os.environ:
                    os.environ["PYTHON_IPTABLES_XTABLES_VERSION"] = libs[0].rsplit(".so.", 1)[1]
                break
    original = ctypes.util.find_library
    ctypes.util.find_library = _fast_find_library(original)
    blocked = "distutils.sysconfig" not in sys.modules
    if blocked:
        sys.modules["distutils.sysconfig"] = None  # type: ignore[assignment]
    try:
        import iptc
    except Exception as exc:  # a missing libiptc/libxtables
        from nsrun.errors import NsrunError

        raise NsrunError(f"cannot load python-iptables ({exc}); is the iptables package installed?") from None
    finally:
        ctypes.util.find_library = original
        if blocked:
            del sys.modules["distutils.sysconfig"]
    _iptc = iptc
    return iptc


class _XtablesLock:
    def __enter__(self) -> None:
        self.fd = os.open(XTABLES_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def tag(bridge: str, profile: str) -> str:
    return f"{TAG}{bridge}:{profile}"


def _comment(rule: Any) -> str | None:
    for m in rule.matches:
        if m.name == "comment":
            return m.comment  # type: ignore[no-any-return]
    return None


def _ours(rule: Any, bridge: str | None) -> bool:
    c = _comment(rule)
    if not c or not c.startswith(TAG):
        return False
    return bridge is None or c.split(":")[1] == bridge


def _rules(bridge: str, subnet: str, profile: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("nat", "POSTROUTING", {"src": subnet, "out_interface": f"!{bridge}", "target": "MASQUERADE"}),
        ("filter", "FORWARD", {"in_interface": bridge, "target": "ACCEPT"}),
        ("filter", "FORWARD", {"out_interface": bridge, "ctstate": "RELATED,ESTABLISHED", "target": "ACCEPT"}),
    ]


def ensure_nat(bridge: str, subnet: str, profile: str) -> None:
    """Masquerade SUBNET leaving through anything but BRIDGE, and accept its forwarding."""
    iptc = load()
    comment = tag(bridge, profile)
    with _XtablesLock():
        for table_name, chain_name, spec in _rules(bridge, subnet, profile):
            table = iptc.Table(table_name)  # python-iptables shares one handle per table
            table.autocommit = False
            table.refresh()
            chain = iptc.Chain(table, chain_name)
            present = any(_comment(r) == comment and r.target.name == spec["target"]
                          and (r.in_interface or "") == spec.get("in_interface", "")
                          and (r.out_interface or "") == spec.get("out_interface", "")
                          for r in chain.rules)
            if not present:
                rule = iptc.Rule()
                if "src" in spec:
                    rule.src = spec["src"]
                if "in_interface" in spec:
                    rule.in_interface = spec["in_interface"]
                if "out_interface" in spec:
                    rule.out_interface = spec["out_interface"]
                if "ctstate" in spec:
                    m = rule.create_match("conntrack")
                    m.ctstate = spec["ctstate"]
                m = rule.create_match("comment")
                m.comment = comment
                rule.create_target(spec["target"])
                chain.insert_rule(rule)
            table.commit()
            table.autocommit = True


def remove(bridge: str | None) -> int:
    """Remove nsrun's rules for BRIDGE (every bridge when None). Returns how many went."""
    iptc = load()
    gone = 0
    with _XtablesLock():
        for table_name, chain_name in (("nat", "POSTROUTING"), ("filter", "FORWARD")):
            table = iptc.Table(table_name)
            table.autocommit = False
            table.refresh()
            chain = iptc.Chain(table, chain_name)
            for rule in [r for r in chain.rules if _ours(r, bridge)]:
                chain.delete_rule(rule)
                gone += 1
            table.commit()
            table.autocommit = True
    return gone


def bridges_with_rules() -> set[str]:
    iptc = load()
    out: set[str] = set()
    with _XtablesLock():
        for table_name, chain_name in (("nat", "POSTROUTING"), ("filter", "FORWARD")):
            table = iptc.Table(table_name)
            table.refresh()
            for r in iptc.Chain(table, chain_name).rules:
                if _ours(r, None):
                    out.add((_comment(r) or "").split(":")[1])
    return out
