"""The nf_tables backend: nsrun's NAT in a table of its own per bridge, `inet nsrun-nat-BRIDGE`,
written as one atomic JSON batch through libnftables.

Why a thin ctypes wrapper over libnftables.so.1 (Debian `libnftables1`, which the
`nftables` package brings) rather than a Python binding:
- Debian's `python3-nftables` lives in the system Python's dist-packages, invisible to a
  venv or pyenv Python such as the one nsrun is installed into;
- `pip-nftables` on PyPI is an unmaintained copy of that same ctypes module;
- the part nsrun needs is five C functions (context, output flags, run a buffer, read the
  output and error buffers, free), so a wrapper of our own costs ~60 lines, imports only the
  standard library, and never runs an `nft` subprocess.

Why one table per bridge: each bridge's table is only changed under that bridge's lock,
so a namespace leaving bridge A can drop A's table whole while another sets up bridge B,
with no read-modify-write race on a shared table. The table's name says whose it is, and
every rule also carries the comment `nsrun:BRIDGE:PROFILE`, as on the legacy backend.

Masquerade lives here (NAT66 too, ensure_nat6, in a chain of its own), and the DNS forward to a loopback stub (ensure_dns_forward, in the
same table: `remove` drops both with it). An accept in nsrun's own forward chain would not help: a packet
crosses every base chain on the forward hook, and a drop in any of them wins. Forwarding
through a host firewall that drops is opened in the chains that drop (see foreign.py).
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

from typing import TYPE_CHECKING

from nsrun.engine.firewall.serial import serialized
from nsrun.errors import NsrunError

if TYPE_CHECKING:
    from nsrun.engine.firewall.forwards import Forward

NAME = "nftables"
TABLE_PREFIX = "nsrun-nat-"
PUBLISH_PREFIX = "nsrun-pub-"  # a namespace's published ports: `inet nsrun-pub-NAME`
TAG = "nsrun:"
LIBRARY = "libnftables.so.1"

_OUTPUT_HANDLE = 1 << 3
_OUTPUT_JSON = 1 << 4
_INPUT_JSON = 1 << 1

_lib: Any = None


class NftError(NsrunError):
    """libnftables refused a command (its error text, after `nftables: `) or could not be loaded."""


def load() -> Any:
    """The library, with the prototypes used here declared. NftError when it is missing."""
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL(LIBRARY, use_errno=True)
        except OSError as exc:
            raise NftError(f"cannot load {LIBRARY} ({exc}); install the nftables package") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        if hasattr(lib, "nft_ctx_input_set_flags"):  # libnftables >= 1.0.7; older ones detect JSON
            lib.nft_ctx_input_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        _lib = lib
    return _lib


def available() -> bool:
    try:
        load()
    except NftError:
        return False
    return True


@serialized
def run(commands: list[dict[str, Any]] | str, *, linger: bool = False) -> dict[str, Any]:
    """Run one JSON batch (a list of commands, applied atomically) or one listing command
    (`list ruleset`); return the parsed JSON output ({} when there is none). LINGER: the
    context's socket stays open until the next call, or the process's end (close_lingering)."""
    out = _run(commands, _OUTPUT_JSON | _OUTPUT_HANDLE, linger)
    try:
        return json.loads(out) if out.strip() else {}
    except ValueError:  # libnftables 1.0.6 writes a table with one flag wrongly (docs/internals.md)
        raise NftError(f"nftables: libnftables' JSON listing cannot be read ({out[:80]!r}...); a table "
                       "with one flag (owner, persist) breaks libnftables 1.0.6's: upgrade it") from None


@serialized
def table_flags(family: str, name: str) -> list[str]:
    """A table's flags (`owner`, `persist`, `dormant`), from nft's text listing: the JSON
    of libnftables 1.0.6 (Debian 12's) shows the release name in their place."""
    for line in _run(f"list table {family} {name}", 0).splitlines():
        if line.strip().startswith("flags "):
            return [f.strip() for f in line.strip()[len("flags "):].split(",")]
    return []


_lingering: list[int] = []  # contexts of run(..., linger=True), for close_lingering()


def close_lingering() -> None:
    """Free the contexts that run(..., linger=True) kept open. Closing the socket that
    deleted a table waits until the kernel has released it (an RCU grace period, 8-15 ms
    here): a caller that has more to do (the rest of a teardown, the interpreter's exit)
    lingers, and the grace period runs meanwhile; the next call here, or the process's
    end, closes it."""
    while _lingering:
        load().nft_ctx_free(_lingering.pop())


def _run(commands: list[dict[str, Any]] | str, flags: int, linger: bool = False) -> str:
    close_lingering()  # at most one open: a long-lived process (the service) keeps none
    lib = load()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftError("nft_ctx_new failed")
    try:
        lib.nft_ctx_output_set_flags(ctx, flags)
        if hasattr(lib, "nft_ctx_input_set_flags") and not isinstance(commands, str):
            lib.nft_ctx_input_set_flags(ctx, _INPUT_JSON)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        text = commands if isinstance(commands, str) else json.dumps({"nftables": commands})
        rc = lib.nft_run_cmd_from_buffer(ctx, text.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
    finally:
        if linger:
            _lingering.append(ctx)
        else:
            lib.nft_ctx_free(ctx)
    if rc != 0:
        raise NftError("nftables: " + (err.strip().splitlines()[0] if err.strip() else f"libnftables failed ({rc})"))
    return out


def ruleset() -> list[dict[str, Any]]:
    """The whole ruleset as libnftables' JSON objects (table, chain, rule... entries)."""
    return list(run("list ruleset").get("nftables", []))


def comment(bridge: str, tag: str) -> str:
    """`nsrun:BRIDGE:TAG`, as the iptables backend's comments."""
    return f"{TAG}{bridge}:{tag}"


def table_name(bridge: str) -> str:
    return TABLE_PREFIX + bridge


def _masquerade(bridge: str, subnet: str, tag: str) -> dict[str, Any]:
    addr, _, length = subnet.partition("/")
    table = table_name(bridge)
    return {"rule": {
        "family": "inet", "table": table, "chain": "postrouting", "comment": tag,
        "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": addr, "len": int(length or 32)}}}},
            {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": bridge}},
            {"masquerade": None},
        ]}}


def ensure_nat(bridge: str, subnet: str, tag: str) -> None:
    """Masquerade SUBNET leaving through anything but BRIDGE. Idempotent: when the table is
    there already (a crashed setup), its chain is flushed in the same batch, so a second call
    leaves one rule, never two. The usual case deletes nothing: a batch that deletes waits
    for an RCU grace period in the kernel (~10 ms)."""
    table = {"family": "inet", "name": table_name(bridge)}
    tag = comment(bridge, tag)
    present = table["name"] in _tables()
    chain = {"family": "inet", "table": table["name"], "name": "postrouting"}
    run([
        {"add": {"table": table}},
        {"add": {"chain": dict(chain, type="nat", hook="postrouting", prio=100, policy="accept")}},
        *([{"flush": {"chain": chain}}] if present else []),
        {"add": _masquerade(bridge, subnet, tag)},
    ])


def ensure_nat6(bridge: str, subnet6: str, tag: str) -> None:
    """NAT66: masquerade SUBNET6 leaving through anything but BRIDGE, in a chain of its own
    in the bridge's table (so that ensure_nat, which refills its own, leaves it), refilled
    whole (idempotent)."""
    addr, _, length = subnet6.partition("/")
    table = table_name(bridge)
    chain = {"family": "inet", "table": table, "name": "postrouting6"}
    run([
        {"add": {"table": {"family": "inet", "name": table}}},
        {"add": {"chain": dict(chain, type="nat", hook="postrouting", prio=100, policy="accept")}},
        {"flush": {"chain": chain}},
        {"add": {"rule": {"family": "inet", "table": table, "chain": "postrouting6", "comment": comment(bridge, tag),
                          "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                       "right": {"prefix": {"addr": addr, "len": int(length or 128)}}}},
            {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": bridge}},
            {"masquerade": None},
        ]}}},
    ])


LOOPBACK = {"prefix": {"addr": "127.0.0.0", "len": 8}}


def _iif(bridge: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": bridge}}


def _ip(field: str, value: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": {"payload": {"protocol": "ip", "field": field}}, "right": value}}


def _dport53(proto: str) -> list[dict[str, Any]]:
    return [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}},
            {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": 53}}]


def ensure_dns_forward(bridge: str, gateway: str, stub: str, tag: str) -> None:
    """DNS to GATEWAY:53 arriving on BRIDGE goes to STUB:53, its source made 127.0.0.1 as it
    is delivered; loopback sources, and loopback destinations that did not come through that
    rewrite, are dropped on BRIDGE (see nsrun.engine.firewall). Base chains of their own in
    the bridge's table, refilled whole in one batch (idempotent)."""
    table = table_name(bridge)
    tag = comment(bridge, tag)
    chains = {
        "dns-dnat": dict(type="nat", hook="prerouting", prio=-100),
        "dns-snat": dict(type="nat", hook="input", prio=100),
        "dns-input": dict(type="filter", hook="input", prio=-1),
        "dns-forward": dict(type="filter", hook="forward", prio=-1),
    }
    rules: list[tuple[str, list[dict[str, Any]]]] = []
    for proto in ("udp", "tcp"):
        rules.append(("dns-dnat", [_iif(bridge), _ip("daddr", gateway), *_dport53(proto),
                                   {"dnat": {"family": "ip", "addr": stub, "port": 53}}]))
        rules.append(("dns-snat", [_iif(bridge), _ip("daddr", stub), *_dport53(proto),
                                   {"snat": {"family": "ip", "addr": "127.0.0.1"}}]))
    not_dnat = {"match": {"op": "==", "left": {"&": [{"ct": {"key": "status"}}, "dnat"]}, "right": 0}}
    rules += [
        ("dns-input", [_iif(bridge), _ip("saddr", LOOPBACK), {"drop": None}]),
        ("dns-input", [_iif(bridge), _ip("daddr", LOOPBACK), not_dnat, {"drop": None}]),
        ("dns-forward", [_iif(bridge), _ip("saddr", LOOPBACK), {"drop": None}]),
    ]
    batch: list[dict[str, Any]] = [{"add": {"table": {"family": "inet", "name": table}}}]
    for name, spec in chains.items():
        chain = {"family": "inet", "table": table, "name": name}
        batch += [{"add": {"chain": dict(chain, policy="accept", **spec)}}, {"flush": {"chain": chain}}]
    batch += [{"add": {"rule": {"family": "inet", "table": table, "chain": chain, "comment": tag, "expr": expr}}}
              for chain, expr in rules]
    run(batch)


def _localnet_rules(bridge: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """What keeps route_localnet on BRIDGE from opening the host's loopback to the bridge:
    loopback sources dropped on the input and forward hooks, loopback destinations on the
    input hook unless DNAT'ed there (the DNS forward's, a published port's replies)."""
    not_dnat = {"match": {"op": "==", "left": {"&": [{"ct": {"key": "status"}}, "dnat"]}, "right": 0}}
    return [
        ("input", [_iif(bridge), _ip("saddr", LOOPBACK), {"drop": None}]),
        ("input", [_iif(bridge), _ip("daddr", LOOPBACK), not_dnat, {"drop": None}]),
        ("forward", [_iif(bridge), _ip("saddr", LOOPBACK), {"drop": None}]),
    ]


def ensure_localnet_guard(bridge: str, tag: str) -> None:
    """The drops of _localnet_rules in base chains of their own in BRIDGE's table (which
    goes whole with the bridge's NAT), refilled whole in one batch (idempotent)."""
    table = table_name(bridge)
    batch: list[dict[str, Any]] = [{"add": {"table": {"family": "inet", "name": table}}}]
    for hook in ("input", "forward"):
        chain = {"family": "inet", "table": table, "name": f"localnet-{hook}"}
        batch += [{"add": {"chain": dict(chain, type="filter", hook=hook, prio=-1, policy="accept")}},
                  {"flush": {"chain": chain}}]
    batch += [{"add": {"rule": {"family": "inet", "table": table, "chain": f"localnet-{hook}",
                                "comment": comment(bridge, tag), "expr": expr}}}
              for hook, expr in _localnet_rules(bridge)]
    run(batch)


def publish_table(name: str) -> str:
    return PUBLISH_PREFIX + name


def _l4(proto: str, field: str, port: int) -> list[dict[str, Any]]:
    return [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}},
            {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}}, "right": port}}]


def _to_host(f: Forward, local: bool) -> list[dict[str, Any]]:
    """The matches for a connection to F's host address and port (LOCAL: from the host itself)."""
    fam = "ipv4" if f.family == "ip" else "ipv6"
    out: list[dict[str, Any]] = [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": fam}}]
    if f.host is None:
        out.append({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}})
        if local and f.family == "ip6":
            # ::1 cannot be forwarded (IPv6 has no route_localnet): left alone, a client's
            # connection there is refused at once and it tries 127.0.0.1 (curl localhost).
            out.append({"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                                  "right": "::1"}})
    else:
        out.append({"match": {"op": "==", "left": {"payload": {"protocol": f.family, "field": "daddr"}},
                              "right": f.host}})
    return out + _l4(f.proto, "dport", f.host_port)


def _publish_rules(bridge: str, forwards: list[Forward]) -> list[tuple[str, list[dict[str, Any]]]]:
    rules: list[tuple[str, list[dict[str, Any]]]] = []
    for f in forwards:
        dnat = {"dnat": {"family": f.family, "addr": f.to, "port": f.port}}
        rules.append(("dnat", [*_to_host(f, False), dnat]))
        rules.append(("dnat-local", [*_to_host(f, True), dnat]))
        for source in f.sources:
            addr, _, length = source.partition("/")
            rules.append(("masquerade", [
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": bridge}},
                {"match": {"op": "==", "left": {"payload": {"protocol": f.family, "field": "daddr"}}, "right": f.to}},
                *_l4(f.proto, "dport", f.port),
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": f.family, "field": "saddr"}},
                           "right": {"prefix": {"addr": addr, "len": int(length)}}}},
                {"masquerade": None}]))
    return rules


def ensure_publish(name: str, bridge: str, forwards: list[Forward], tag: str) -> None:
    """Namespace NAME's published ports (FORWARDS), in a table of its own, `inet
    nsrun-pub-NAME`: the DNAT on the prerouting hook (from anywhere) and on the output hook
    (from the host itself), and the masquerade of the connections from SOURCES (see
    Forward). Made or refilled whole in one batch: idempotent."""
    table = publish_table(name)
    chains = {"dnat": ("prerouting", -100), "dnat-local": ("output", -100), "masquerade": ("postrouting", 100)}
    batch: list[dict[str, Any]] = [{"add": {"table": {"family": "inet", "name": table}}}]
    for chain_name, (hook, prio) in chains.items():
        chain = {"family": "inet", "table": table, "name": chain_name}
        batch += [{"add": {"chain": dict(chain, type="nat", hook=hook, prio=prio, policy="accept")}},
                  {"flush": {"chain": chain}}]
    batch += [{"add": {"rule": {"family": "inet", "table": table, "chain": chain, "comment": tag, "expr": expr}}}
              for chain, expr in _publish_rules(bridge, forwards)]
    run(batch)


def _tables(prefix: str = TABLE_PREFIX) -> list[str]:
    out = run("list tables").get("nftables", [])
    return [t["table"]["name"] for t in out
            if "table" in t and t["table"].get("family") == "inet"
            and str(t["table"].get("name", "")).startswith(prefix)]


def remove_publish(name: str, also: list[dict[str, Any]] | None = None, linger: bool = False) -> int:
    """Drop namespace NAME's table of published ports, in one batch with the commands ALSO
    (the deletion of its openings in the host's chains: a batch that deletes waits ~10-15 ms
    for the kernel, once however much it deletes; LINGER: see run()). How many tables went
    (0 or 1)."""
    if not available():
        return 0
    present = publish_table(name) in _tables(PUBLISH_PREFIX)
    table = {"family": "inet", "name": publish_table(name)}
    batch = ([{"add": {"table": table}}, {"delete": {"table": table}}] if present else []) + list(also or ())
    if batch:
        run(batch, linger=linger)  # add-then-delete: idempotent, as remove()
    return int(present)


def published() -> set[str]:
    """The namespaces nsrun's tables of published ports are for (gc)."""
    if not available():
        return set()
    return {n[len(PUBLISH_PREFIX):] for n in _tables(PUBLISH_PREFIX)}


def remove(bridge: str | None) -> int:
    """Drop nsrun's table for BRIDGE (every nsrun table when None). Returns the tables gone."""
    if not available():
        return 0
    gone = [n for n in _tables() if bridge is None or n == table_name(bridge)]
    batch: list[dict[str, Any]] = []
    for n in gone:  # add-then-delete: idempotent even when it went meanwhile
        table = {"family": "inet", "name": n}
        batch += [{"add": {"table": table}}, {"delete": {"table": table}}]
    if batch:
        run(batch)
    return len(gone)


def bridges() -> set[str]:
    """The bridges nsrun's tables are for (gc)."""
    if not available():
        return set()
    return {n[len(TABLE_PREFIX):] for n in _tables()}
