"""A built-in chain of a legacy x_tables table, read without python-iptables: its policy and
whether its last rule drops everything, by getsockopt on a raw socket (IPT_SO_GET_INFO,
IPT_SO_GET_ENTRIES), as iptables-legacy-save reads them. For the look every setup takes at
the host's firewall (nsrun.engine.firewall.foreign): importing python-iptables costs ~50 ms.

Read only a table /proc/net/ip_tables_names lists: asking for one that is not loaded loads
it. Needs CAP_NET_RAW. The layouts are the kernel's uapi (linux/netfilter_ipv4/ip_tables.h,
linux/netfilter/x_tables.h), on a 64-bit kernel.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from typing import NamedTuple

SOL_IP = 0
IPT_SO_GET_INFO = 64
IPT_SO_GET_ENTRIES = 65
HOOKS = {"PREROUTING": 0, "INPUT": 1, "FORWARD": 2, "OUTPUT": 3, "POSTROUTING": 4}
_INFO = struct.Struct("32sI5I5III")  # struct ipt_getinfo: name, valid_hooks, hook_entry, underflow, num_entries, size
_ENTRIES_HEAD = 40  # struct ipt_get_entries: name[32], size, then the entries (8-byte aligned)
_IP = 84  # struct ipt_ip: addresses, masks, interfaces and their masks, proto, flags, invflags
_ENTRY = 112  # struct ipt_entry: ipt_ip, nfcache, target_offset, next_offset, comefrom, counters
_TARGET_NAME = slice(2, 31)  # struct xt_entry_target: target_size (u16), name[29], revision
_VERDICTS = {-1: "DROP", -2: "ACCEPT", -4: "QUEUE", -5: "RETURN"}  # -NF_x - 1; XT_RETURN


class Chain(NamedTuple):
    policy: str  # ACCEPT | DROP | ...
    last_drops: bool  # its last rule matches every packet and drops or rejects it


class XtablesError(OSError):
    pass


def _getsockopt(fd: int, opt: int, buf: ctypes.Array[ctypes.c_char]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    size = ctypes.c_uint32(len(buf))
    if libc.getsockopt(fd, SOL_IP, opt, buf, ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        raise XtablesError(err, os.strerror(err))


def _target(blob: bytes, entry: int) -> tuple[str, int | None]:
    """The target of the entry at ENTRY: its name ("" for a standard verdict) and verdict."""
    target_offset = struct.unpack_from("H", blob, entry + 88)[0]
    at = entry + target_offset
    name = blob[at:at + 32][_TARGET_NAME].split(b"\0", 1)[0].decode(errors="replace")
    if name:
        return name, None
    return "", struct.unpack_from("i", blob, at + 32)[0]


def builtin_chain(table: str, chain: str) -> Chain:
    """Built-in CHAIN (FORWARD, INPUT...) of legacy TABLE (filter...); XtablesError when it
    cannot be read."""
    hook = HOOKS[chain]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        info = ctypes.create_string_buffer(table.encode(), _INFO.size)
        _getsockopt(s.fileno(), IPT_SO_GET_INFO, info)
        _, valid, *rest = _INFO.unpack(info.raw)
        hook_entry, underflow, size = rest[0:5], rest[5:10], rest[11]
        if not valid & (1 << hook):
            raise XtablesError(0, f"table {table} has no chain {chain}")
        entries = ctypes.create_string_buffer(_ENTRIES_HEAD + size)
        struct.pack_into("32sI", entries, 0, table.encode(), size)
        _getsockopt(s.fileno(), IPT_SO_GET_ENTRIES, entries)
    blob = entries.raw[_ENTRIES_HEAD:]
    start, under = hook_entry[hook], underflow[hook]
    name, verdict = _target(blob, under)
    policy = name or _VERDICTS.get(verdict if verdict is not None else 0, "?")
    last = None
    at = start
    while at < under:  # the chain's rules, to its policy (the underflow entry)
        last = at
        at += struct.unpack_from("H", blob, at + 90)[0]
    drops = False
    if last is not None:
        name, verdict = _target(blob, last)
        matches_all = blob[last:last + _IP] == bytes(_IP) and struct.unpack_from("H", blob, last + 88)[0] == _ENTRY
        drops = matches_all and (name == "REJECT" or (name == "" and verdict == -1))
    return Chain(policy, drops)
