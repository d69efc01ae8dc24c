"""Issue 2: `nsrun [-p PROFILE] -- CMD`, end to end on the real kernel, inside the lab."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CLIENT, REPO, write_profile
from nsrun import lab as labmod
from nsrun import names

INSIDE = "ip -4 -j addr; echo '#'; ip -4 -j route; echo '#'; cat /etc/resolv.conf; echo '#'; env | grep ^NSRUN_ | sort"

HOST_KINDS = ["legacy", "nftables", "docker"]


def test_nat_run_reaches_upstream_through_host_nat(lab):
    r = lab.nsrun("-p", "nat", "--", *CLIENT)
    assert r.returncode == 0, r.stderr
    # The lab host's default route is via gw2, which masquerades: the server sees gw2.
    assert r.stdout.strip() == labmod.GW2_UP


def test_inside_view_address_route_dns_env(lab, tmp_path):
    prof = write_profile(tmp_path, "natdns", 'mode = "nat"\nsubnet = "10.251.7.0/24"\n'
                         'bridge = "nsrtest0"\ndns = ["192.0.2.53", "192.0.2.54"]\n')
    r = lab.nsrun("-p", str(prof), "--", "sh", "-c", INSIDE)
    assert r.returncode == 0, r.stderr
    addrs, routes, resolv, env = r.stdout.split("#\n")
    links = json.loads(addrs)
    assert sorted(link["ifname"] for link in links) == ["eth0", "lo"]
    eth0 = next(link for link in links if link["ifname"] == "eth0")
    assert len(eth0["addr_info"]) == 1
    address = eth0["addr_info"][0]["local"]
    assert address.startswith("10.251.7.") and eth0["addr_info"][0]["prefixlen"] == 24
    default = [rt for rt in json.loads(routes) if rt["dst"] == "default"]
    assert default == [{**default[0], "gateway": "10.251.7.1", "dev": "eth0"}]
    servers = [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")]
    assert servers == ["192.0.2.53", "192.0.2.54"]
    env_vars = dict(line.split("=", 1) for line in env.split())
    assert env_vars["NSRUN_PROFILE"] == "natdns"
    assert env_vars["NSRUN_ADDRESS"] == address
    assert env_vars["NSRUN_NETNS"].startswith("nsrun-")


def test_bridge_and_rules_exist_while_running_and_go_after(lab):
    p = lab.popen("--", "sleep", "30")
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            links = lab.host_json("ip", "-j", "link", "show", "type", "bridge")
            if any(link["ifname"] == "nsrun0" for link in links):
                rules = lab.nat_rules()
                if "nsrun:nsrun0:nat" in rules:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("bridge nsrun0 and its NAT rules never appeared")
        if lab.kind == "legacy":
            assert "-A POSTROUTING -s 10.251.0.0/24 ! -o nsrun0" in rules
        else:
            assert 'ip saddr 10.251.0.0/24 oifname != "nsrun0" masquerade' in rules
            assert lab.host("cat", "/proc/net/ip_tables_names").stdout == ""
        assert lab.host("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=10)
    assert p.returncode == -signal.SIGTERM  # nsrun ends by CMD's signal (issue 12)


@pytest.mark.parametrize("cmd,status", [
    (["sh", "-c", "exit 7"], 7),
    (["true"], 0),
    (["nsrun-no-such-program"], 127),
    (["/etc/hostname"], 126),
    (["sh", "-c", "kill -KILL $$"], -9),  # nsrun ends by CMD's signal: its shell sees 128+N
    (["sh", "-c", "kill -USR1 $$"], -signal.SIGUSR1),
])
def test_exit_status_passes_through(lab, cmd, status):
    r = lab.nsrun("--", *cmd)
    assert r.returncode == status, r.stderr
    if status in (126, 127):
        # The notice of an opened host firewall (nftables/docker hosts) is not the error.
        err = "".join(line for line in r.stderr.splitlines(True)
                      if not line.startswith("nsrun: opened forwarding for "))
        assert err.count("\n") == 1 and err.startswith("nsrun: ")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_to_nsrun_reaches_cmd_and_cleans_up(lab, tmp_path, sig):
    mark = tmp_path / "got"
    script = (f"import signal,sys,time\n"
              f"def h(n,f): open({str(mark)!r},'w').write(str(n)); sys.exit(0)\n"
              f"signal.signal({int(sig)}, h)\nprint('ready', flush=True)\ntime.sleep(60)\n")
    p = lab.popen("--", "python3", "-c", script)
    assert p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    p.send_signal(sig)
    p.communicate(timeout=10)
    assert time.monotonic() - t0 < 2.0
    assert mark.read_text() == str(int(sig))
    assert p.returncode == 0  # CMD handled the signal and exited 0


def test_sigterm_stops_a_cmd_that_ignores_nothing(lab):
    p = lab.popen("--", "sleep", "60")
    time.sleep(0.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=10)
    assert time.monotonic() - t0 < 2.0
    assert p.returncode == -signal.SIGTERM


def _other_user() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def test_runs_as_sudo_caller_without_capabilities(lab):
    who = _other_user()
    r = lab.nsrun("--", "sh", "-c", "id -u; id -g; grep CapEff /proc/self/status",
                  env={"SUDO_UID": str(who.pw_uid), "SUDO_GID": str(who.pw_gid), "SUDO_USER": who.pw_name})
    assert r.returncode == 0, r.stderr
    uid, gid, cap = r.stdout.split("\n")[:3]
    assert int(uid) == who.pw_uid and int(gid) == who.pw_gid
    assert int(cap.split()[1], 16) == 0


def test_user_option_and_root(lab):
    who = _other_user()
    r = lab.nsrun("-u", who.pw_name, "--", "id", "-un")
    assert (r.returncode, r.stdout.strip()) == (0, who.pw_name)
    r = lab.nsrun("-u", "root", "--", "sh", "-c", "id -u; grep CapEff /proc/self/status",
                  env={"SUDO_UID": str(who.pw_uid), "SUDO_GID": str(who.pw_gid)})
    uid, cap = r.stdout.split("\n")[:2]
    assert uid == "0" and int(cap.split()[1], 16) != 0
    r = lab.nsrun("-u", "no-such-user-xyz", "--", "true")
    assert r.returncode == 2 and "unknown user" in r.stderr


def test_concurrent_runs_get_distinct_addresses(lab):
    procs = [lab.popen("--", "sh", "-c", "echo $NSRUN_ADDRESS; sleep 1") for _ in range(8)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    addrs = [o[0].strip() for o in outs]
    assert len(set(addrs)) == 8, addrs


DRAWS = str(Path(__file__).resolve().parent / "engine_support" / "draws.py")


def drawing_argv(lab, draws: list[str], *args: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of `nsrun ARGS` in the lab host, its ephemeral names drawn
    from DRAWS first."""
    return lab.host_argv([sys.executable, DRAWS, *args]), {**lab.env, "NSRUN_TEST_DRAWS": ",".join(draws)}


def drawing(lab, draws: list[str], *args: str, **kw) -> subprocess.Popen[str]:
    argv, env = drawing_argv(lab, draws, *args)
    return subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, **kw)


@pytest.mark.parametrize("second", ["nat", "gw1"])
def test_a_run_that_draws_a_live_runs_name_gets_a_namespace_of_its_own(lab, second):
    x, y = names.ephemeral_name(), names.ephemeral_name()
    second_draw_gets_its_own(lab, x, y, second, lambda draws, *args, **kw: drawing(lab, draws, *args, **kw))


def test_concurrent_runs_that_all_draw_one_name_get_one_namespace_each(lab):
    x = names.ephemeral_name()
    procs = [drawing(lab, [x], "--", "sh", "-c", 'echo "$NSRUN_NETNS $NSRUN_ADDRESS"; sleep 1') for _ in range(8)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    got = [o[0].split() for o in outs]
    assert len({ns for ns, _ in got}) == 8 and len({a for _, a in got}) == 8, got
    assert [ns for ns, _ in got].count(x) == 1, got  # one run had it; the other seven drew again


def second_draw_gets_its_own(lab, x: str, y: str, second: str, start, settle=lambda: None) -> None:
    """Ephemeral names are random, 32 bits: two runs can draw one. The second must neither
    share the first's namespace (same profile) nor fail on it (another profile), and its end
    must not take the first's down: it draws again. START(DRAWS, *ARGS, **KW) starts
    `nsrun ARGS` whose names are drawn from DRAWS first (the first run's: X; the second's: X, Y);
    SETTLE waits until the runs that ended are down."""
    first = start([x], "-p", "nat", "--", "sh", "-c", 'echo "$NSRUN_NETNS"; exec cat >/dev/null',
                  stdin=subprocess.PIPE)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == x
        second_run = start([x, y], "-p", second, "--", "sh", "-c", 'echo "$NSRUN_NETNS $NSRUN_PROFILE"')
        out, err = second_run.communicate(timeout=60)
        assert second_run.returncode == 0, err
        assert out.split() == [y, second]
        deadline = time.monotonic() + 20  # through a service, Y goes just after its CMD
        while os.path.exists(f"/run/netns/{y}"):
            assert time.monotonic() < deadline, f"{y} stayed"
            time.sleep(0.02)
        assert os.path.exists(f"/run/netns/{x}"), "the second run's end took the first's namespace"
        r = lab.nsrun("exec", x, "--", *CLIENT)  # and it still leaves as it did
        assert r.returncode == 0 and r.stdout.strip() == labmod.GW2_UP, r.stderr
    finally:
        assert first.stdin is not None
        first.stdin.close()
        first.wait(timeout=60)
    assert first.returncode == 0, first.stderr.read() if first.stderr else ""
    settle()
    assert not os.path.exists(f"/run/netns/{x}")


# -- clear errors, exit 2, one line, nothing changed -------------------------------------

def _one_line_error(r: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("nsrun: "), r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr


def test_non_root_is_refused(lab, public_nsrun):
    who = _other_user()
    r = subprocess.run(lab.host_argv(["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}",
                                      "--clear-groups", "--inh-caps=-all",
                                      *lab.nsrun_argv("--", "true")[2:]]),
                       env={**lab.env, **public_nsrun}, capture_output=True, text=True, timeout=30, cwd="/")
    assert "root" in _one_line_error(r)


def test_unknown_profile(lab):
    assert "unknown profile 'nope'" in _one_line_error(lab.nsrun("-p", "nope", "--", "true"))


def test_malformed_profile(lab, tmp_path):
    bad = write_profile(tmp_path, "bad", 'mode = "nat"\nsubnet = "10.251.0.0/24\n')
    err = _one_line_error(lab.nsrun("-p", str(bad), "--", "true"))
    assert str(bad) in err and "line 2" in err


def test_invalid_profile_value(lab, tmp_path):
    bad = write_profile(tmp_path, "bad2", 'mode = "nat"\nsubnet = "10.251.0.0/24"\ngateway = "10.9.9.1"\n')
    err = _one_line_error(lab.nsrun("-p", str(bad), "--", "true"))
    assert f"{bad}: gateway:" in err and "outside the subnet" in err


def test_missing_command(lab):
    assert "missing" in _one_line_error(lab.nsrun("-p", "nat"))
    assert "missing" in _one_line_error(lab.nsrun("-p", "nat", "--"))


def test_nat_subnet_overlapping_a_host_route_is_refused(lab, tmp_path):
    bad = write_profile(tmp_path, "overlap", 'mode = "nat"\nbridge = "nsrtest1"\nsubnet = "192.168.1.128/25"\n')
    err = _one_line_error(lab.nsrun("-p", str(bad), "--", "true"))
    assert "overlaps the host route 192.168.1.0/24 dev br0" in err


def test_profile_writable_by_others_is_refused(lab, tmp_path):
    bad = write_profile(tmp_path, "loose", 'mode = "isolated"\n', mode=0o666)
    assert "writable" in _one_line_error(lab.nsrun("-p", str(bad), "--", "true"))


def test_demo_leaves_nothing_behind():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from conftest import REPO

    before = sorted(os.listdir("/run/netns"))
    had_state_dir = os.path.exists("/run/nsrun")  # the default one: the demo keeps its own
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe: block-buffered
    r = subprocess.run([__import__("sys").executable, "-m", "nsrun", "demo"], capture_output=True,
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
