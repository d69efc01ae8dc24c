"""The run suite's checks (`nsrun [-p PROFILE] -- CMD` end to end in the lab), kept apart from
tests/lab/test_run.py, which runs each as a test on every kind of lab host, so that
tests/lab/test_service.py can run a representative part of them once more through
`nsrun daemon` (issue 13, acceptance 7). Each takes the `lab` fixture's LabRunner.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time

import pytest

from conftest import CLIENT, write_profile
from nsrun import lab as labmod

INSIDE = "ip -4 -j addr; echo '#'; ip -4 -j route; echo '#'; cat /etc/resolv.conf; echo '#'; env | grep ^NSRUN_ | sort"
EXIT_STATUSES = [
    (["sh", "-c", "exit 7"], 7),
    (["true"], 0),
    (["nsrun-no-such-program"], 127),
    (["/etc/hostname"], 126),
    (["sh", "-c", "kill -KILL $$"], -9),  # nsrun ends by CMD's signal: its shell sees 128+N
    (["sh", "-c", "kill -USR1 $$"], -signal.SIGUSR1),
]
SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


def nat_run_reaches_upstream_through_host_nat(lab):
    r = lab.nsrun("-p", "nat", "--", *CLIENT)
    assert r.returncode == 0, r.stderr
    # The lab host's default route is via gw2, which masquerades: the server sees gw2.
    assert r.stdout.strip() == labmod.GW2_UP


def inside_view_address_route_dns_env(lab, tmp_path):
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


def bridge_and_rules_exist_while_running_and_go_after(lab):
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


def exit_status_passes_through(lab, cmd, status):
    r = lab.nsrun("--", *cmd)
    assert r.returncode == status, r.stderr
    if status in (126, 127):
        # The notice of an opened host firewall (nftables/docker hosts) is not the error.
        err = "".join(line for line in r.stderr.splitlines(True)
                      if not line.startswith("nsrun: opened forwarding for "))
        assert err.count("\n") == 1 and err.startswith("nsrun: ")


def signal_to_nsrun_reaches_cmd_and_cleans_up(lab, tmp_path, sig):
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


def sigterm_stops_a_cmd_that_ignores_nothing(lab):
    p = lab.popen("--", "sleep", "60")
    time.sleep(0.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=10)
    assert time.monotonic() - t0 < 2.0
    assert p.returncode == -signal.SIGTERM


def other_user() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


ROOTS_GROUPS = "0,4242"  # supplementary groups of the root shell nsrun is run from (sudo keeps them)


def runs_as_sudo_caller_without_capabilities(lab):
    """CMD is the sudo caller: uid, gid and supplementary groups the caller's (none of
    root's: nsrun is started with groups of its own, as a root shell may have), and no
    capability in any set (issue 27, blind spot 3: CapEff alone missed kept groups)."""
    who = other_user()
    script = "id -u; id -g; id -G; grep -E '^Cap(Prm|Eff|Amb|Inh)' /proc/self/status"
    argv = lab.host_argv(["setpriv", f"--groups={ROOTS_GROUPS}", *lab.nsrun_argv("--", "sh", "-c", script)[2:]])
    r = subprocess.run(argv, env={**lab.env, "SUDO_UID": str(who.pw_uid), "SUDO_GID": str(who.pw_gid),
                                  "SUDO_USER": who.pw_name}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    uid, gid, groups, *caps = r.stdout.splitlines()
    assert int(uid) == who.pw_uid and int(gid) == who.pw_gid
    assert sorted(map(int, groups.split())) == sorted(os.getgrouplist(who.pw_name, who.pw_gid)), groups
    assert {line.split(":")[0]: int(line.split()[1], 16) for line in caps} == \
        {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapAmb": 0}, caps


def user_option_and_root(lab):
    who = other_user()
    r = lab.nsrun("-u", who.pw_name, "--", "id", "-un")
    assert (r.returncode, r.stdout.strip()) == (0, who.pw_name)
    r = lab.nsrun("-u", "root", "--", "sh", "-c", "id -u; grep CapEff /proc/self/status",
                  env={"SUDO_UID": str(who.pw_uid), "SUDO_GID": str(who.pw_gid)})
    uid, cap = r.stdout.split("\n")[:2]
    assert uid == "0" and int(cap.split()[1], 16) != 0
    r = lab.nsrun("-u", "no-such-user-xyz", "--", "true")
    assert r.returncode == 2 and "unknown user" in r.stderr


def concurrent_runs_get_distinct_addresses(lab):
    procs = [lab.popen("--", "sh", "-c", "echo $NSRUN_ADDRESS; sleep 1") for _ in range(8)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    addrs = [o[0].strip() for o in outs]
    assert len(set(addrs)) == 8, addrs


# -- ephemeral names drawn twice (tests/support/draws.py) ----------------------------------

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

def one_line_error(r: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("nsrun: "), r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr


def unknown_profile(lab):
    assert "unknown profile 'nope'" in one_line_error(lab.nsrun("-p", "nope", "--", "true"))


def malformed_profile(lab, tmp_path):
    bad = write_profile(tmp_path, "bad", 'mode = "nat"\nsubnet = "10.251.0.0/24\n')
    err = one_line_error(lab.nsrun("-p", str(bad), "--", "true"))
    assert str(bad) in err and "line 2" in err


def invalid_profile_value(lab, tmp_path):
    bad = write_profile(tmp_path, "bad2", 'mode = "nat"\nsubnet = "10.251.0.0/24"\ngateway = "10.9.9.1"\n')
    err = one_line_error(lab.nsrun("-p", str(bad), "--", "true"))
    assert f"{bad}: gateway:" in err and "outside the subnet" in err


def missing_command(lab):
    assert "missing" in one_line_error(lab.nsrun("-p", "nat"))
    assert "missing" in one_line_error(lab.nsrun("-p", "nat", "--"))


def nat_subnet_overlapping_a_host_route_is_refused(lab, tmp_path):
    bad = write_profile(tmp_path, "overlap", 'mode = "nat"\nbridge = "nsrtest1"\nsubnet = "192.168.1.128/25"\n')
    err = one_line_error(lab.nsrun("-p", str(bad), "--", "true"))
    assert "overlaps the host route 192.168.1.0/24 dev br0" in err


def profile_writable_by_others_is_refused(lab, tmp_path):
    bad = write_profile(tmp_path, "loose", 'mode = "isolated"\n', mode=0o666)
    assert "writable" in one_line_error(lab.nsrun("-p", str(bad), "--", "true"))
