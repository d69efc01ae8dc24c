"""Issue 13, acceptance 5: callers without root, through the service, as its policy allows.

The service runs in the lab host with a policy of the test's own (`--policy`, a root-owned
file) that lets nobody use profiles gw1 and nat; the socket is opened to everyone (as if
nobody were in group nsrun). nobody's `nsrun` is this checkout's (a world-readable copy,
conftest.public_nsrun) run with setpriv: no sudo anywhere. The service starts CMD inside as
nobody; a user the policy does not name (daemon), a profile file, `-u` and a profile the
policy does not grant are each refused with exit 2, one line, and a line in the service's
log with the uid.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import CLIENT, LabRunner
from nsrun import lab as labmod
from nsrun import names
from nsrun.linux import netns
from support import runs
from support.service import Service, served
from support.terminals import SYSTEM_PYTHON, Term

HOST_KINDS = ["legacy"]

# CMD runs as nobody: a Python nobody may execute (the suite's may sit under /root)
USER_CLIENT = [SYSTEM_PYTHON, *CLIENT[1:]]

POLICY = """\
version = 1
[[allow]]
users = ["nobody"]
create = ["*"]  # names of any kind (the default is nobody-*: tests/lab/test_namespace_ownership.py)
profiles = ["gw1", "nat"]
enter = ["shared-*"]
limit = 4
"""


def policy_service(lab: LabRunner, tmp_path: Path, draws: list[str] | None = None, text: str = POLICY) -> Service:
    """The service, started with POLICY, or TEXT (and DRAWS: support.service.Service)."""
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    policy.chmod(0o644)
    svc = Service(lab, tmp_path / "daemon.log", "--policy", str(policy), draws=draws).start()
    os.chmod(svc.sock, 0o666)  # the test's socket is root's (no group nsrun here)
    return svc


@pytest.fixture
def user_service(lab: LabRunner, tmp_path: Path) -> Any:
    svc = policy_service(lab, tmp_path)
    try:
        yield svc
        assert svc.proc is not None and svc.proc.poll() is None, f"the service died: {svc.log()}"
        svc.wait_idle()
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        svc.stop()


def as_user(lab: LabRunner, user: str, *args: str) -> list[str]:
    who = pwd.getpwnam(user)
    return lab.host_argv(["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--init-groups",
                          "--inh-caps=-all", *lab.nsrun_argv(*args)[2:]])


def user_run(lab: LabRunner, public: dict[str, str], user: str, *args: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_user(lab, user, *args), env={**lab.env, **public, **(env or {})},
                          capture_output=True, text=True, timeout=60, cwd="/")


def test_user_in_policy_runs_through_gw1_without_sudo(lab, user_service, public_nsrun):
    nobody = pwd.getpwnam("nobody")
    before = served(user_service)
    r = user_run(lab, public_nsrun, "nobody", "-p", "gw1", "--", *USER_CLIENT)
    assert (r.returncode, r.stdout.strip()) == (0, labmod.GW1_UP), (r.stderr, user_service.log())
    script = ("id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; echo \"wl=$WAYLAND_DISPLAY\"; "
              "echo \"ns=$NSRUN_NETNS\"; pwd; exit 7")
    r = user_run(lab, public_nsrun, "nobody", "-p", "nat", "--", "sh", "-c", script,
                 env={"WAYLAND_DISPLAY": "wayland-test-1"})
    lines = r.stdout.split("\n")
    assert r.returncode == 7, (r.stdout, r.stderr, user_service.log())
    assert int(lines[0]) == nobody.pw_uid
    caps = dict(line.split(":\t") for line in lines[1:3])
    assert int(caps["CapEff"], 16) == 0 and caps["NoNewPrivs"] == "1", caps
    assert lines[3] == "wl=wayland-test-1"
    assert lines[4].startswith("ns=nsrun-")
    assert lines[5] == "/"  # the client's working directory
    assert served(user_service) == before + 2  # both through the service
    assert not [n for n in os.listdir("/run/netns") if n.startswith("nsrun-")]  # gone: ephemeral


@pytest.mark.parametrize("second", ["nat", "gw1"])
def test_user_run_that_draws_a_live_runs_name_draws_again(lab, tmp_path, public_nsrun, second):
    x, y = names.ephemeral_name(), names.ephemeral_name()
    svc = policy_service(lab, tmp_path, draws=[x, x, y])
    try:
        def start(_draws: list[str], *args: str, **kw: Any) -> subprocess.Popen[str]:
            return subprocess.Popen(as_user(lab, "nobody", *args), env={**lab.env, **public_nsrun}, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", **kw)

        runs.second_draw_gets_its_own(lab, x, y, second, start, svc.wait_idle)
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        svc.stop()


def test_user_signal_and_exit_status_pass_through(lab, user_service, public_nsrun):
    """Without a terminal: a TERM sent to the client reaches CMD; CMD's signal is the
    client's end."""
    p = subprocess.Popen(as_user(lab, "nobody", "--", "sh", "-c",
                                 "trap 'echo got-term; exit 5' TERM; echo ready; sleep 30 & wait"),
                         env={**lab.env, **public_nsrun}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd="/")
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        p.terminate()
        out, err = p.communicate(timeout=30)
        assert (p.returncode, out.strip()) == (5, "got-term"), (out, err, user_service.log())
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    r = user_run(lab, public_nsrun, "nobody", "--", "sh", "-c", "kill -USR1 $$")
    assert r.returncode == -10, (r.returncode, r.stderr)


def test_user_on_a_terminal_gets_a_pty_and_ctrl_c_stops_cmd(lab, user_service, public_nsrun):
    script = "tty; stty size; echo ready; sleep 30; echo not-interrupted"
    term = Term(as_user(lab, "nobody", "-p", "nat", "--", "sh", "-c", script),
                {**lab.env, **public_nsrun}, size=(33, 101))
    try:
        outer = term.line_after("shelltty")
        inner = term.expect(r"\n(/dev/pts/\d+)\r?\n").group(1)
        assert inner != outer  # a pty of its own, not the caller's terminal
        assert term.expect(r"\n(\d+ \d+)\r?\n").group(1) == "33 101"
        term.expect("ready")
        time.sleep(0.2)
        term.type(b"\x03")  # ^C: a byte the pty turns into CMD's SIGINT
        assert term.line_after("rc") == "-2", term.out  # the client ends by CMD's signal
        assert "not-interrupted" not in term.out.decode()
        assert term.line_after("mode") == "same"
    finally:
        term.close()
    term = Term(as_user(lab, "nobody", "--", "sh", "-c", "exit 3"), {**lab.env, **public_nsrun})
    try:
        assert term.line_after("rc") == "3"
    finally:
        term.close()


@pytest.mark.parametrize("who,args,words", [
    ("daemon", ("-p", "nat", "--", "true"), "daemon"),  # a user the policy does not name
    ("nobody", ("-p", "/etc/passwd", "--", "true"), "profile file"),  # a path
    ("nobody", ("-p", "isolated", "--", "true"), "isolated"),  # a profile it does not grant
    ("nobody", ("-u", "root", "--", "true"), "-u needs root"),
    ("nobody", ("-P", "8080:9000", "--", "true"), "may not publish host port 8080"),  # issue 21: not by default
    ("nobody", ("up", "nobody-web", "-P", "8080:9000"), "may not publish host port 8080"),
])
def test_refusals_exit_2_with_a_log_line(lab, user_service, public_nsrun, who, args, words):
    uid = pwd.getpwnam(who).pw_uid
    r = user_run(lab, public_nsrun, who, *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, (r.stderr, user_service.log())
    assert "Traceback" not in r.stderr
    assert f"for uid {uid}" in user_service.log()


def test_user_named_namespace_own_by_default(lab, user_service, public_nsrun):
    """nobody makes a named namespace of its own, runs in it, and takes it down; daemon is
    refused it; root's namespaces are not nobody's to enter nor to take down, and one the
    policy lets nobody enter (`enter = ["shared-*"]`) is still not nobody's to take down:
    `down` asks the policy's *remove* grants (issue 27, blind spot 1)."""
    r = user_run(lab, public_nsrun, "nobody", "up", "mine", "-p", "nat")
    assert r.returncode == 0, (r.stderr, user_service.log())
    try:
        r = user_run(lab, public_nsrun, "nobody", "exec", "mine", "--", "id", "-u")
        assert (r.returncode, r.stdout.strip()) == (0, str(pwd.getpwnam("nobody").pw_uid)), r.stderr
        assert lab.nsrun("up", "roots", "-p", "isolated").returncode == 0
        assert lab.nsrun("up", "shared-roots", "-p", "isolated").returncode == 0
        try:
            r = user_run(lab, public_nsrun, "nobody", "exec", "roots", "--", "true")
            assert r.returncode == 2 and "roots" in r.stderr, r.stderr
            r = user_run(lab, public_nsrun, "nobody", "exec", "shared-roots", "--", "true")
            assert r.returncode == 0, (r.stderr, user_service.log())  # enter: granted by the pattern
            for ns in ("shared-roots", "roots"):
                r = user_run(lab, public_nsrun, "nobody", "down", ns)
                assert (r.returncode, r.stderr.count("\n")) == (2, 1), (ns, r.stderr, user_service.log())
                assert f"may not remove namespace {ns!r}" in r.stderr, r.stderr
                assert os.path.exists(f"/run/netns/{ns}"), f"nobody took down root's {ns}"
        finally:
            assert lab.nsrun("down", "roots").returncode == 0
            assert lab.nsrun("down", "shared-roots").returncode == 0
    finally:
        r = user_run(lab, public_nsrun, "nobody", "down", "mine")
        assert r.returncode == 0, (r.stderr, user_service.log())
    assert "mine" not in lab.nsrun("ls").stdout


@pytest.mark.parametrize("up_args,down_args", [
    (["-p", "nat"], []),
    (["--profile=nat"], ["--grace=2"]),
    (["-pnat"], ["--grace", "1", "--refuse-busy"]),
])
def test_every_spelling_of_up_and_down_goes_through_the_service(lab, user_service, public_nsrun, up_args, down_args):
    """One grammar: `up NAME --profile=X` means `up NAME -p X`, and both reach the service,
    the only way a user without root is served (the old hand parser sent `--profile=X` and
    `--grace=N` daemonless, where nobody was refused for lack of root)."""
    before = served(user_service)
    r = user_run(lab, public_nsrun, "nobody", "up", "spelled", *up_args)
    assert r.returncode == 0, (r.stderr, user_service.log())
    try:
        assert "spelled is up: profile nat" in r.stdout, r.stdout
        assert served(user_service) == before + 1
    finally:
        r = user_run(lab, public_nsrun, "nobody", "down", "spelled", *down_args)
        assert r.returncode == 0 and "spelled is down" in r.stdout, (r.stderr, user_service.log())
    assert served(user_service) == before + 2


def test_user_shell_through_the_service(lab, user_service, public_nsrun):
    """nobody's `nsrun shell NAME`: NAME is made, nobody's shell runs in it as nobody, and
    NAME goes when the shell exits; with --keep it stays, nobody's own."""
    env = {**lab.env, **public_nsrun, "SHELL": "/bin/sh"}
    before = served(user_service)
    r = subprocess.run(as_user(lab, "nobody", "shell", "myshell"), env=env, input="id -u; echo $NSRUN_NETNS; exit 4\n",
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert (r.returncode, r.stdout) == (4, f"{pwd.getpwnam('nobody').pw_uid}\nmyshell\n"), (r.stderr, user_service.log())
    assert r.stderr == ("nsrun: creating namespace myshell; it is removed when the shell exits (--keep keeps it)\n"
                        "nsrun: removed namespace myshell\n")
    assert not os.path.exists("/run/netns/myshell")
    r = subprocess.run(as_user(lab, "nobody", "shell", "mykept", "-p", "gw1", "--keep"), env=env,
                       input=" ".join(USER_CLIENT) + "\n", capture_output=True, text=True, timeout=60, cwd="/")
    assert (r.returncode, r.stdout.strip()) == (0, labmod.GW1_UP), (r.stderr, user_service.log())
    try:
        assert "mykept" in lab.nsrun("ls").stdout
    finally:
        r = user_run(lab, public_nsrun, "nobody", "down", "mykept")
        assert r.returncode == 0, (r.stderr, user_service.log())
    assert served(user_service) == before + 4  # two shells, root's ls, down


def test_user_client_killed_leaves_nothing(lab, user_service, public_nsrun):
    """A client SIGKILLed while its CMD runs: the service stops CMD (and anything else in the
    run's namespace) and takes the namespace down (the lab fixture then finds the lab host as
    it was)."""
    p = subprocess.Popen(as_user(lab, "nobody", "--", "sh", "-c", "echo ready; exec sleep 300"),
                         env={**lab.env, **public_nsrun}, stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        names = [n for n in os.listdir("/run/netns") if n.startswith("nsrun-")]
        assert len(names) == 1, names
        ino = os.stat(f"/run/netns/{names[0]}").st_ino
        assert user_service.proc is not None
        cmd = [pid for pid in _inside(ino) if _parent(pid) == user_service.proc.pid]
        assert len(cmd) == 1, [_described(pid) for pid in _inside(ino)]  # CMD, forked by the service
        p.kill()
        p.wait()
        user_service.wait_idle()
        assert not os.path.exists(f"/run/netns/{names[0]}")
        # Nothing runs on in the namespace (it lives on as long as a process holds it), and
        # CMD has ended: gone, or a zombie the service has yet to reap.
        left = _inside(ino)
        assert not left, [_described(pid) for pid in left]
        assert _state(cmd[0]) in ("gone", "Z"), _described(cmd[0])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _inside(ino: int) -> list[str]:
    """The processes whose network namespace has inode INO (zombies have none)."""
    return [str(pid) for pid in netns.pids_by_inode().get(ino, [])]


def _status(pid: str) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def _parent(pid: str) -> int | None:
    ppid = _status(pid).get("PPid")
    return int(ppid) if ppid else None


def _state(pid: str) -> str:
    return _status(pid).get("State", "gone").split()[0]


def _described(pid: str) -> str:
    """PID's command line, parent, state, uid, network namespace and cgroup."""
    st = _status(pid)
    out = [pid, " ".join(_cmdline(pid)), *(f"{k}: {st.get(k, '-')}" for k in ("State", "PPid", "Uid"))]
    for what, read in (("netns", lambda: os.readlink(f"/proc/{pid}/ns/net")),
                       ("cgroup", lambda: open(f"/proc/{pid}/cgroup").read().strip().replace("\n", " "))):
        try:
            out.append(f"{what}: {read()}")
        except OSError as exc:
            out.append(f"{what}: {exc.strerror}")
    return "; ".join(out)


def _cmdline(pid: str) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def test_stopping_the_service_hangs_up_user_programs(lab, tmp_path, public_nsrun):
    """`systemctl stop` (SIGTERM) while a caller without root runs a program: the service
    hangs it up (SIGHUP), takes its namespace down, tells the client (which ends by SIGHUP)
    and stops at once, instead of waiting for the program."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    svc = Service(lab, tmp_path / "daemon.log", "--policy", str(policy)).start()
    try:
        os.chmod(svc.sock, 0o666)
        p = subprocess.Popen(as_user(lab, "nobody", "--", "sh", "-c", "echo ready; exec sleep 300"),
                             env={**lab.env, **public_nsrun}, stdout=subprocess.PIPE, text=True, cwd="/")
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            names = [n for n in os.listdir("/run/netns") if n.startswith("nsrun-")]
            t0 = time.monotonic()
            svc.stop()
            assert time.monotonic() - t0 < 20, svc.log()
            assert p.wait(30) == -1, svc.log()  # the client ends by CMD's SIGHUP
            assert names and not any(os.path.exists(f"/run/netns/{n}") for n in names)
            assert "hung up 1 program" in svc.log()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    finally:
        svc.stop()


def test_user_publishes_the_ports_the_policy_grants(lab, tmp_path, public_nsrun):
    """Issue 21: a rule's `publish` grants host ports (here 8000-8999): nobody's server
    inside is reached from the LAN at the host's address, and sees the client's own
    address; a port outside the range is refused (exit 2, one line)."""
    svc = policy_service(lab, tmp_path, text=POLICY + 'publish = ["8000-8999"]\n')
    try:
        refused = user_run(lab, public_nsrun, "nobody", "-P", "9000:9000", "--", "true")
        assert refused.returncode == 2 and "may not publish host port 9000" in refused.stderr, refused.stderr
        p = subprocess.Popen(as_user(lab, "nobody", "-P", "8080:9000", "--", SYSTEM_PYTHON, "-c",
                                     "import socket; s = socket.socket(); s.bind(('0.0.0.0', 9000)); s.listen();"
                                     "print('ready', flush=True); c, a = s.accept(); c.sendall(a[0].encode())"),
                             env={**lab.env, **public_nsrun}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd="/")
        try:
            assert p.stdout is not None and p.stdout.readline() == "ready\n", p.stderr
            ask = subprocess.run(["nsenter", f"--net=/run/netns/{lab.lab.other}", SYSTEM_PYTHON, "-c",
                                  f"import socket; s = socket.create_connection(('{labmod.HOST_ADDR}', 8080), 5);"
                                  "print(s.recv(64).decode())"], capture_output=True, text=True, timeout=30)
            assert ask.stdout.strip() == labmod.OTHER_ADDR, (ask.stderr, svc.log())
        finally:
            out, err = p.communicate(timeout=60)
        assert p.returncode == 0, (err, svc.log())
        svc.wait_idle()
        assert "Traceback" not in svc.log(), svc.log()
    finally:
        svc.stop()
