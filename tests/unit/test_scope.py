"""Issue 24, item 7: the systemd scope a program started for a caller without root is put in
(nsrun.process.scope), and what the caller's process passes on (nsrun.linux.inherited).

The StartTransientUnit call is checked as a D-Bus message (its signature, its properties:
those of `systemd-run --scope --slice=user-UID.slice`), serialised as jeepney sends it. A
real systemd cannot run here (none is the init system): the call against a stand-in
manager on a private bus, with CMD started by spawn, is tests/lab/test_spawn_placement.py.
"""

from __future__ import annotations

import os
import re
import resource

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsrun.linux import inherited
from nsrun.process import scope

# systemd's unit name rules (unit-name.c): [A-Za-z0-9:_.\\-], a prefix, a suffix.
UNIT_RE = re.compile(r"[A-Za-z0-9:_.\\-]{1,250}\.scope")


def test_the_start_call_is_systemd_runs_scope_in_the_users_slice() -> None:
    unit = scope.unit_name("alice-vpn")
    assert UNIT_RE.fullmatch(unit) and unit.startswith("nsrun-alice-vpn-"), unit
    assert scope.unit_name("alice-vpn") != unit  # one of its own each time
    msg = scope.start_message(unit, 1000, 4321, "nsrun: a program of uid 1000 in alice-vpn")
    from jeepney.low_level import HeaderFields

    fields = msg.header.fields
    assert fields[HeaderFields.destination] == "org.freedesktop.systemd1"
    assert fields[HeaderFields.path] == "/org/freedesktop/systemd1"
    assert fields[HeaderFields.interface] == "org.freedesktop.systemd1.Manager"
    assert fields[HeaderFields.member] == "StartTransientUnit"
    assert fields[HeaderFields.signature] == "ssa(sv)a(sa(sv))"
    assert msg.body == (unit, "fail", [
        ("Description", ("s", "nsrun: a program of uid 1000 in alice-vpn")),
        ("Slice", ("s", "user-1000.slice")),
        ("PIDs", ("au", [4321])),
        ("CollectMode", ("s", "inactive-or-failed")),
    ], [])
    assert len(msg.serialise(serial=1)) > 100  # jeepney can send it as it is


def test_booted_is_sd_booted(monkeypatch: pytest.MonkeyPatch) -> None:
    assert scope.booted() == os.path.isdir("/run/systemd/system")


def test_no_bus_is_no_scope() -> None:
    r, w = os.pipe()
    try:
        where, why = scope.start(os.getpid(), r, 1000, "x", bus="unix:path=/nonexistent/bus", timeout=1)
    finally:
        os.close(r)
        os.close(w)
    assert where is None and why is not None and "cannot connect to the system bus" in why


# -- what the caller's process passes on -----------------------------------------------------

def test_this_processes_limits_umask_and_groups_are_read_as_the_kernel_has_them() -> None:
    got = inherited.read(os.getpid())
    assert {res for res, _, _ in got.rlimits} == set(inherited.RESOURCES.values())
    for res, soft, hard in got.rlimits:
        assert resource.getrlimit(res) == (soft, hard), res
    mask = os.umask(0o022)
    os.umask(mask)
    assert got.umask == mask
    assert set(got.groups) == set(os.getgroups())


limit_value = st.one_of(st.just("unlimited"), st.integers(min_value=0, max_value=2**62).map(str))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(limit_value, limit_value), min_size=16, max_size=16),
       st.integers(min_value=0, max_value=0o777), st.lists(st.integers(min_value=0, max_value=2**32 - 2)))
def test_the_kernels_format_reads_back(values: list[tuple[str, str]], umask: int, groups: list[int]) -> None:
    """/proc/PID/limits and /proc/PID/status as fs/proc/base.c and array.c print them."""
    lines = ["Limit                     Soft Limit           Hard Limit           Units     "]
    for (name, _), (soft, hard) in zip(inherited.RESOURCES.items(), values):
        lines.append(f"{name:<25} {soft:<20} {hard:<20} {'seconds':<10}")
    limits = inherited.parse_limits("\n".join(lines) + "\n")
    want = {res: (resource.RLIM_INFINITY if s == "unlimited" else int(s),
                  resource.RLIM_INFINITY if h == "unlimited" else int(h))
            for res, (s, h) in zip(inherited.RESOURCES.values(), values)}
    assert {res: (soft, hard) for res, soft, hard in limits} == want
    status = f"Name:\tsh\nUmask:\t{umask:04o}\nState:\tS (sleeping)\nGroups:\t{' '.join(map(str, groups))} \n"
    assert inherited.parse_status(status) == (umask, tuple(groups))


def test_a_missing_limit_or_line_is_an_error() -> None:
    with pytest.raises(ValueError):
        inherited.parse_limits("Limit\nMax cpu time unlimited unlimited seconds\n")
    with pytest.raises(ValueError):
        inherited.parse_status("Name:\tsh\nGroups:\t1 2\n")
