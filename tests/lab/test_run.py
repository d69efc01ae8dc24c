"""Issue 2: `nsrun [-p PROFILE] -- CMD`, end to end on the real kernel, inside the lab.

Most checks are in tests/support/runs.py, which tests/lab/test_service.py runs in part once
more through `nsrun daemon`; here each is a test on every kind of lab host in HOST_KINDS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from nsrun import names
from support import runs
from support.draws import drawing

HOST_KINDS = ["legacy", "nftables", "docker"]


def test_nat_run_reaches_upstream_through_host_nat(lab):
    runs.nat_run_reaches_upstream_through_host_nat(lab)


def test_inside_view_address_route_dns_env(lab, tmp_path):
    runs.inside_view_address_route_dns_env(lab, tmp_path)


def test_bridge_and_rules_exist_while_running_and_go_after(lab):
    runs.bridge_and_rules_exist_while_running_and_go_after(lab)


@pytest.mark.parametrize("cmd,status", runs.EXIT_STATUSES)
def test_exit_status_passes_through(lab, cmd, status):
    runs.exit_status_passes_through(lab, cmd, status)


@pytest.mark.parametrize("sig", runs.SIGNALS)
def test_signal_to_nsrun_reaches_cmd_and_cleans_up(lab, tmp_path, sig):
    runs.signal_to_nsrun_reaches_cmd_and_cleans_up(lab, tmp_path, sig)


def test_sigterm_stops_a_cmd_that_ignores_nothing(lab):
    runs.sigterm_stops_a_cmd_that_ignores_nothing(lab)


def test_runs_as_sudo_caller_without_capabilities(lab):
    runs.runs_as_sudo_caller_without_capabilities(lab)


def test_user_option_and_root(lab):
    runs.user_option_and_root(lab)


def test_concurrent_runs_get_distinct_addresses(lab):
    runs.concurrent_runs_get_distinct_addresses(lab)


@pytest.mark.parametrize("second", ["nat", "gw1"])
def test_a_run_that_draws_a_live_runs_name_gets_a_namespace_of_its_own(lab, second):
    x, y = names.ephemeral_name(), names.ephemeral_name()
    runs.second_draw_gets_its_own(lab, x, y, second, lambda draws, *args, **kw: drawing(lab, draws, *args, **kw))


def test_concurrent_runs_that_all_draw_one_name_get_one_namespace_each(lab):
    x = names.ephemeral_name()
    procs = [drawing(lab, [x], "--", "sh", "-c", 'echo "$NSRUN_NETNS $NSRUN_ADDRESS"; sleep 1') for _ in range(8)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    got = [o[0].split() for o in outs]
    assert len({ns for ns, _ in got}) == 8 and len({a for _, a in got}) == 8, got
    assert [ns for ns, _ in got].count(x) == 1, got  # one run had it; the other seven drew again


# -- clear errors, exit 2, one line, nothing changed -------------------------------------

def test_non_root_is_refused(lab, public_nsrun):
    who = runs.other_user()
    r = subprocess.run(lab.host_argv(["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}",
                                      "--clear-groups", "--inh-caps=-all",
                                      *lab.nsrun_argv("--", "true")[2:]]),
                       env={**lab.env, **public_nsrun}, capture_output=True, text=True, timeout=30, cwd="/")
    assert "root" in runs.one_line_error(r)


def test_unknown_profile(lab):
    runs.unknown_profile(lab)


def test_malformed_profile(lab, tmp_path):
    runs.malformed_profile(lab, tmp_path)


def test_invalid_profile_value(lab, tmp_path):
    runs.invalid_profile_value(lab, tmp_path)


def test_missing_command(lab):
    runs.missing_command(lab)


def test_nat_subnet_overlapping_a_host_route_is_refused(lab, tmp_path):
    runs.nat_subnet_overlapping_a_host_route_is_refused(lab, tmp_path)


def test_profile_writable_by_others_is_refused(lab, tmp_path):
    runs.profile_writable_by_others_is_refused(lab, tmp_path)


def test_demo_leaves_nothing_behind():
    # No `lab` fixture: `nsrun demo` builds a lab of its own (in this session's /run/netns).
    if os.geteuid() != 0:
        pytest.skip("needs root")
    before = sorted(os.listdir("/run/netns"))
    had_state_dir = os.path.exists("/run/nsrun")  # the default one: the demo keeps its own
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe: block-buffered
    r = subprocess.run([sys.executable, "-m", "nsrun", "demo"], capture_output=True,
                       text=True, timeout=120, cwd=REPO, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any("P1: nsrun -p gw1" in line and line.endswith("-> gw1") for line in lines), r.stdout
    assert any("P2: nsrun -p gw2" in line and line.endswith("-> gw2") for line in lines), r.stdout
    # Printed once, also into a pipe (the lab's forked children once wrote it out again).
    assert r.stdout.count("Building lab ") == 1, r.stdout
    assert sorted(os.listdir("/run/netns")) == before
    assert os.path.exists("/run/nsrun") == had_state_dir


def test_background_children_do_not_outlive_an_ephemeral_namespace(lab, tmp_path):
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    r = lab.nsrun("--", "sh", "-c", f"sleep 300 & echo $! > {pidfile}")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 5
    pid = int(pidfile.read_text())
    # The namespace's last process was stopped with it (gone, or a zombie its new parent
    # has not reaped yet).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            status = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        status = "gone"
    assert status in ("gone", "Z"), status
