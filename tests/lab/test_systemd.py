"""Issue 5, in the lab: the nsrun@ template's commands, the generated unit's ExecStart and
stop, and sd_notify (NOTIFY_SOCKET) through nsrun, run on the real kernel inside the lab
host. Units are read back as systemd reads them (tests/support/systemd_units.py); their
text and `systemd-analyze verify`: tests/unit/test_systemd.py.
"""

from __future__ import annotations

import array
import errno
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PROFILES, REPO, write_profile
from support.systemd_units import exec_argv, unit_environment

SYSTEMD_DIR = REPO / "systemd"
TEMPLATE = SYSTEMD_DIR / "nsrun@.service"
SHIPPED_NSRUN = "/usr/local/bin/nsrun"
SYSTEM_PYTHON = "/usr/bin/python3"  # CMD run as nobody must be able to execute it
needs_system_python = pytest.mark.requires(SYSTEM_PYTHON)


# -- lab: the template's commands -------------------------------------------------------------

_VOLATILE = {"ifindex", "address", "broadcast", "link_index", "link_netnsid", "link", "stats",
             "stats64", "valid_life_time", "preferred_life_time", "perm_address", "min_mtu", "max_mtu"}


def _stable(obj):
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _view(lab, name: str) -> dict:
    """What `up` changed, without what differs between two identical runs (ifindex, MAC)."""
    view = {k: _stable(v) for k, v in lab.snapshot().items()}
    for key in ("run_netns", "etc_netns"):  # machine-wide: other runs may come and go there
        view[key] = [n for n in view[key] if n == name]
    inside = {}
    if os.path.exists(f"/run/netns/{name}"):
        for what in (["addr"], ["route", "show", "table", "all"], ["link"]):
            # IPv4: IPv6 link-local addresses derive from the random MAC, and are tentative
            # for a while; nsrun does not configure IPv6.
            out = subprocess.run(["ip", "-4", "-n", name, "-j", *what], capture_output=True, text=True,
                                 check=True).stdout
            inside[what[0]] = _stable(json.loads(out or "null"))
    view["inside"] = inside
    resolv = Path(f"/etc/netns/{name}/resolv.conf")
    view["resolv.conf"] = resolv.read_text() if resolv.exists() else None
    return view


def test_template_start_and_stop_do_what_up_and_down_do(lab, tmp_path):
    """Acceptance 3: ExecStart/ExecStop of nsrun@NAME, run by hand in the lab host, make
    and remove exactly what `nsrun up NAME -p NAME` / `nsrun down NAME` do."""
    name = f"{lab.lab.id}-tpl"  # instance = namespace = profile, as in nsrun@gw1
    write_profile(tmp_path, name, (PROFILES / "gw1.toml").read_text())
    env = {"NSRUN_PROFILE_PATH": str(tmp_path)}
    text = TEMPLATE.read_text()
    start = exec_argv(text, specifiers={"i": name})
    stop = exec_argv(text, "ExecStop", specifiers={"i": name})
    assert start[0] == stop[0] == SHIPPED_NSRUN
    assert not os.path.exists(f"/run/netns/{name}")
    base = _view(lab, name)

    by_hand = lab.nsrun("up", name, "-p", name, env=env)
    assert by_hand.returncode == 0, by_hand.stderr
    after_up = _view(lab, name)
    assert after_up["inside"] and after_up != base
    down = lab.nsrun("down", name, env=env)
    assert down.returncode == 0, down.stderr
    assert _view(lab, name) == base

    started = lab.nsrun(*start[1:], env=env)  # lab.nsrun runs nsrun itself in the lab host
    try:
        assert (started.returncode, started.stdout, started.stderr) == \
            (by_hand.returncode, by_hand.stdout, by_hand.stderr)
        now = _view(lab, name)
        assert now == after_up, json.dumps({k: (now[k], after_up[k]) for k in now if now[k] != after_up[k]}, indent=1)
        # RemainAfterExit: a second start (systemctl restart after a failed stop) is harmless
        again = lab.nsrun(*start[1:], env=env)
        assert again.returncode == 0 and "already up" in again.stdout
    finally:
        stopped = lab.nsrun(*stop[1:], env=env)
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (down.returncode, down.stdout, down.stderr)
    assert _view(lab, name) == base
    again = lab.nsrun(*stop[1:], env=env)  # ExecStop on an already removed namespace
    assert again.returncode == 0


# -- lab: the generated unit's start and stop --------------------------------------------------

TERM_PROG = r"""
import os, signal, sys, time
def term(signum, frame):
    # os.write, not print: the signal may come while print("ready") still holds stdout's
    # buffer (a loaded machine), and print would then raise "reentrant call".
    os.write(1, b"got SIGTERM as uid %d\n" % os.getuid())
    os._exit(0)
signal.signal(signal.SIGTERM, term)
print("ready", os.getpid(), os.environ["NSRUN_NETNS"], os.environ.get("NOTIFY_SOCKET", "-"),
      "$HOME stays", flush=True)
time.sleep(120)
print("not stopped", flush=True)
"""


def _generated(lab, *cmd: str, user: str = "nobody") -> tuple[list[str], list[str], dict[str, str]]:
    """The unit `nsrun unit` prints for CMD (in the lab's environment): its ExecStart argv,
    ExecStopPost argv and Environment=."""
    r = lab.nsrun("unit", "svc", "-p", "gw1", "-u", user, "--", *cmd)
    assert r.returncode == 0, r.stderr
    return exec_argv(r.stdout), exec_argv(r.stdout, "ExecStopPost"), unit_environment(r.stdout)


def _start_as_systemd_would(lab, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    # The unit's own Environment= over what the lab needs; nsenter enters the lab host's
    # network namespace and execs ARGV, so the Popen's pid is nsrun's (the main PID).
    return subprocess.Popen(lab.host_argv(argv), env={**lab.env, **env}, text=True, cwd="/",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _readline(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output from CMD in time"
    return proc.stdout.readline()


def _gone(pid: int, timeout: float = 10) -> bool:
    """PID has ended (a zombie counts: an orphan waits for whoever reaps orphans here)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _where(*pids: int) -> str:
    """State, signal masks, kernel wait channel and threads of PIDS and their children."""
    lines = []
    todo = list(pids)
    while todo:
        pid = todo.pop(0)
        try:
            with open(f"/proc/{pid}/status") as fh:
                keep = [ln.strip() for ln in fh if ln.split(":")[0] in
                        ("Name", "State", "Uid", "Threads", "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")]
            with open(f"/proc/{pid}/wchan") as fh:
                keep.append(f"wchan: {fh.read()}")
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except OSError as exc:
            keep = [f"gone ({exc.strerror})"]
        lines.append(f"{pid}: " + "; ".join(keep))
    return "\n".join(lines)


@needs_system_python
@pytest.mark.parametrize("notify", [None, "@nsrun-test-stop"], ids=["plain", "relay"])
def test_stop_reaches_cmd_and_nsrun_cleans_up(lab, notify):
    """Acceptance 4: SIGTERM to the main PID only (KillMode=mixed) reaches CMD; nsrun takes
    the namespace down and exits; the fixture checks that nothing is left in the lab host.
    With an abstract NOTIFY_SOCKET, nsrun waits in its relay loop instead of waitpid."""
    argv, stop_post, env = _generated(lab, SYSTEM_PYTHON, "-c", TERM_PROG)
    assert argv[argv.index("--") + 1:] == [SYSTEM_PYTHON, "-c", TERM_PROG]
    proc = _start_as_systemd_would(lab, argv, {**env, **({"NOTIFY_SOCKET": notify} if notify else {})})
    try:
        line = _readline(proc).split()
        assert line[0] == "ready", line
        cmd_pid, netns_name, seen = int(line[1]), line[2], line[3]
        assert " ".join(line[4:]) == "$HOME stays"
        assert (seen == "-") if notify is None else seen.startswith("/run/nsrun-notify.")
        assert os.path.exists(f"/run/netns/{netns_name}")
        assert os.stat(f"/proc/{cmd_pid}").st_uid == 65534  # CMD as nobody, nsrun as root
        assert os.stat(f"/proc/{proc.pid}").st_uid == 0
        os.kill(proc.pid, signal.SIGTERM)  # what systemd sends first with KillMode=mixed
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # Seen once in a full CI run, never reproduced alone: say where each process stood.
            pytest.fail(f"nsrun did not end within 30 s of SIGTERM:\n{_where(proc.pid, cmd_pid)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == "got SIGTERM as uid 65534\n", (out, err)
    assert _gone(cmd_pid)
    assert not os.path.exists(f"/run/netns/{netns_name}")
    assert notify is None or not os.path.exists(os.path.dirname(seen))
    post = subprocess.run(lab.host_argv(stop_post), env={**lab.env, **env}, capture_output=True,
                          text=True, timeout=60, cwd="/")
    assert post.returncode == 0 and post.stdout == "nothing to reclaim\n", (post.stdout, post.stderr)


@needs_system_python
@pytest.mark.parametrize("notify", [None, "@nsrun-test-stop-term"], ids=["plain", "relay"])
def test_stop_of_a_cmd_that_dies_of_sigterm_is_a_clean_stop(lab, notify):
    """Issue 12 acceptance 3, as far as it goes without a booted systemd here (this machine
    has none, and the suite starts units only as systemd would, see the tests above): with
    KillMode=mixed, systemd's SIGTERM reaches nsrun alone; CMD dies of it; nsrun takes the
    namespace down and then ends by SIGTERM itself, which systemd counts as a clean stop
    (Result=success, inactive), where an exit status of 143 is a failure."""
    prog = ("import os, time; print('ready', os.getpid(), os.environ['NSRUN_NETNS'], flush=True); "
            "time.sleep(120)")
    argv, _, env = _generated(lab, SYSTEM_PYTHON, "-c", prog)
    proc = _start_as_systemd_would(lab, argv, {**env, **({"NOTIFY_SOCKET": notify} if notify else {})})
    try:
        _, pid, netns_name = _readline(proc).split()
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM  # killed by the signal, not `exit 143`
    assert _gone(int(pid))
    assert not os.path.exists(f"/run/netns/{netns_name}")


@needs_system_python
def test_final_sigkill_is_reclaimed_by_exec_stop_post(lab):
    """CMD ignores SIGTERM until TimeoutStopSec=: systemd SIGKILLs every process of the
    unit, nsrun included, then runs ExecStopPost=, which takes the namespace down."""
    prog = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', os.getpid(), os.environ['NSRUN_NETNS'], flush=True); time.sleep(120)")
    argv, stop_post, env = _generated(lab, SYSTEM_PYTHON, "-c", prog)
    proc = _start_as_systemd_would(lab, argv, env)
    try:
        _, pid, netns_name = _readline(proc).split()
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # nsrun waits for CMD, which ignores SIGTERM
        for victim in (proc.pid, int(pid)):  # the final SIGKILL, to the whole cgroup
            os.kill(victim, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert _gone(int(pid))
        assert os.path.exists(f"/run/netns/{netns_name}")  # left behind, as expected
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    post = subprocess.run(lab.host_argv(stop_post), env={**lab.env, **env}, capture_output=True,
                          text=True, timeout=60, cwd="/")
    assert post.returncode == 0, post.stderr
    assert netns_name in post.stdout
    assert not os.path.exists(f"/run/netns/{netns_name}")


# -- lab: NOTIFY_SOCKET ---------------------------------------------------------------------

SENDER = r"""
import array, os, socket, sys
addr = os.environ["NOTIFY_SOCKET"]
print(os.getpid(), addr, flush=True)
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", addr)
if len(sys.argv) > 1:  # and a file descriptor, as FDSTORE=1 does
    r, w = os.pipe()
    os.write(w, b"through the relay")
    os.close(w)
    s.sendmsg([b"FDSTORE=1\nFDNAME=pipe"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))], 0, addr)
"""

_UCRED = struct.Struct("iII")


def _recv_notification(sock: socket.socket) -> tuple[bytes, tuple[int, int, int] | None, list[int]]:
    data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(64))
    creds, fds = None, []
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            creds = _UCRED.unpack(cdata[:_UCRED.size])
        elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += array.array("i", cdata[:len(cdata) - len(cdata) % 4]).tolist()
    return data, creds, fds


def test_path_notify_socket_reaches_cmd(lab, tmp_path):
    """Acceptance 5: a path NOTIFY_SOCKET given to nsrun reaches CMD in its own network
    namespace, and CMD's READY=1 arrives on it, from CMD itself."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.settimeout(30)
        r = lab.nsrun("-p", "isolated", "--", sys.executable, "-c", SENDER, env={"NOTIFY_SOCKET": path})
        assert r.returncode == 0, r.stderr
        pid, seen = r.stdout.split()
        assert seen == path  # passed through untouched
        data, creds, _ = _recv_notification(sock)
    assert data == b"READY=1"
    assert creds is not None and creds[0] == int(pid)  # from CMD, not from nsrun


RECEIVER = r"""
import array, json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.settimeout(30)
print("bound", flush=True)
for _ in range(int(sys.argv[2])):
    data, anc, _, _ = s.recvmsg(4096, 256)
    out = {"data": data.decode(), "fds": []}
    for level, kind, cdata in anc:
        if kind == socket.SCM_CREDENTIALS:
            out["pid"], out["uid"], out["gid"] = struct.unpack("iII", cdata[:12])
        elif kind == socket.SCM_RIGHTS:
            for fd in array.array("i", cdata[:len(cdata) - len(cdata) % 4]):
                out["fds"].append(os.read(fd, 100).decode())
                os.close(fd)
    print(json.dumps(out), flush=True)
"""


@needs_system_python
def test_abstract_notify_socket_is_relayed(lab):
    """An abstract NOTIFY_SOCKET belongs to the network namespace that bound it (here the
    lab host, where nsrun runs): nsrun relays it, with CMD's credentials and its fds."""
    abstract = f"nsrun-test-{lab.lab.id}-{os.getpid()}"
    receiver = subprocess.Popen(lab.host_argv([sys.executable, "-c", RECEIVER, abstract, "2"]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _readline(receiver) == "bound\n"
        r = lab.nsrun("-p", "isolated", "-u", "nobody", "--", SYSTEM_PYTHON, "-c", SENDER, "fd",
                      env={"NOTIFY_SOCKET": f"@{abstract}"})
        out, err = receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    pid, seen = r.stdout.split()
    assert seen.startswith("/run/nsrun-notify.") and seen.endswith("/notify")
    assert not os.path.exists(os.path.dirname(seen))  # the relay's directory is gone
    got = [json.loads(line) for line in out.splitlines()]
    assert got == [
        {"data": "READY=1", "fds": [], "pid": int(pid), "uid": 65534, "gid": 65534},
        {"data": "FDSTORE=1\nFDNAME=pipe", "fds": ["through the relay"], "pid": int(pid), "uid": 65534,
         "gid": 65534},
    ], err


@needs_system_python
def test_relay_directory_stays_roots(lab):
    """CMD's user can send to the relay's socket but put nothing beside it: a directory it
    made there used to keep the relay's directory from being removed (issue 15, Low)."""
    abstract = f"nsrun-test-dir-{lab.lab.id}-{os.getpid()}"
    prog = ("import os; d = os.path.dirname(os.environ['NOTIFY_SOCKET']); print(d)\n"
            "try:\n    os.mkdir(d + '/planted'); print('planted')\nexcept OSError as e: print(e.errno)")
    r = lab.nsrun("-p", "isolated", "-u", "nobody", "--", SYSTEM_PYTHON, "-c", prog,
                  env={"NOTIFY_SOCKET": f"@{abstract}"})
    assert r.returncode == 0, r.stderr
    where, outcome = r.stdout.split()
    assert where.startswith("/run/nsrun-notify.")
    assert outcome == str(errno.EACCES)
    assert not os.path.exists(where)


def test_abstract_notify_socket_nobody_listens(lab):
    """Nothing bound at the abstract address: CMD runs all the same, nsrun warns once."""
    r = lab.nsrun("-p", "isolated", "--", sys.executable, "-c", SENDER, "fd",
                  env={"NOTIFY_SOCKET": f"@nsrun-test-absent-{os.getpid()}"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("\n") == 1 and "not relayed" in r.stderr, r.stderr
    _, seen = r.stdout.split()
    assert not os.path.exists(os.path.dirname(seen))


def test_watchdog_pid_becomes_cmds(lab):
    """systemd sets WATCHDOG_PID to the main PID (nsrun); CMD must see its own to serve it."""
    prog = "import os; print(os.environ.get('WATCHDOG_PID'), os.getpid())"
    for preset, mine in (("$$", True), ("1", False)):
        script = f'export WATCHDOG_PID={preset}; exec "$@"'
        r = subprocess.run(lab.host_argv(["sh", "-c", script, "sh", sys.executable, "-m", "nsrun",
                                          "-p", "isolated", "--", sys.executable, "-c", prog]),
                           env=lab.env, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        seen, pid = r.stdout.split()
        assert (seen == pid) if mine else (seen == "1")
