"""What the plugin prints: a Result in the configuration's spec version, the prevResult a
plugin before nsrun made (kept, nsrun's interfaces after its own), error objects and the
VERSION answer. Pure functions of dictionaries.

A Result (spec 1.0.0): `interfaces` (name, mac, sandbox: the namespace path for those in
the container), `ips` (address in CIDR form, gateway, `interface`: an index into
`interfaces`), `routes` (dst, gw), `dns` (nameservers, search, options). 0.4.0 has the same
keys, and `version` ("4" or "6") on each of `ips`.
"""

from __future__ import annotations

import copy
TYPE_CHECKING = False  # typing costs ~5 ms to import: for mypy only

from nsrun.cni.netconf import SUPPORTED

if TYPE_CHECKING:
    from typing import Any


def merged(prev: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """OURS after PREV (a plugin before nsrun in a list): PREV's interfaces, addresses and
    routes first, nsrun's after them (their `interface` indices moved along); PREV's DNS when
    it has any, else ours."""
    if not prev:
        return copy.deepcopy(ours)
    out = {k: copy.deepcopy(v) for k, v in prev.items() if k != "cniVersion"}
    before = _list(out, "interfaces")
    out["interfaces"] = before + copy.deepcopy(ours["interfaces"])
    out["ips"] = _list(out, "ips") + [{**ip, "interface": ip["interface"] + len(before)} if "interface" in ip
                                      else dict(ip) for ip in ours["ips"]]
    out["routes"] = _list(out, "routes") + copy.deepcopy(ours["routes"])
    if not out.get("dns"):
        out["dns"] = copy.deepcopy(ours["dns"])
    return out


def _list(result: dict[str, Any], key: str) -> list[Any]:
    value = result.get(key)
    return value if isinstance(value, list) else []


def in_version(result: dict[str, Any], version: str) -> dict[str, Any]:
    """RESULT as spec VERSION has it, with `cniVersion`; empty lists and objects left out."""
    out: dict[str, Any] = {"cniVersion": version}
    for key, value in result.items():
        if key == "cniVersion" or value in ([], {}, None):
            continue
        out[key] = copy.deepcopy(value)
    if version == "0.4.0":
        for ip in out.get("ips", []):
            if isinstance(ip, dict) and "version" not in ip and isinstance(ip.get("address"), str):
                ip["version"] = "6" if ":" in ip["address"] else "4"
    elif version in SUPPORTED:
        for ip in out.get("ips", []):
            if isinstance(ip, dict):
                ip.pop("version", None)  # a 0.4.0 prevResult's, gone in 1.0.0
    return out


def error(code: int, msg: str, details: str = "", version: str = "1.0.0") -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        out["details"] = details
    return out


def versions(version: str) -> dict[str, Any]:
    """The VERSION answer for a caller speaking VERSION."""
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED)}
