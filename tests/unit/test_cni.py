"""Issue 22, the CNI plugin without a lab: the configuration and CNI_* variables (every
refusal a CniError with the spec's code, whatever the input: hypothesis), the Result's shape
per version and with a prevResult, the attachment's derived name and record, the refusals
of `engine.up` around attachments, and the plugin's lean start (what each verb imports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from nsrun import engine, names
from nsrun.cni import netconf, plugin, results
from nsrun.cni.netconf import CniError
from nsrun.engine.record import NsRecord
from nsrun.errors import UsageError

CONF = {"cniVersion": "1.0.0", "name": "gw1net", "type": "nsrun", "profile": "gw1"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/c1", "CNI_IFNAME": "eth0"}
CODES = {1, 2, 4, 5, 6, 7, 11, 50, 100, 101, 999}


def parse(conf: Any = None, **env: str | None) -> netconf.Request:
    data = conf if isinstance(conf, bytes) else json.dumps(CONF if conf is None else conf).encode()
    environ = {k: v for k, v in {**ENV, **env}.items() if v is not None}
    return netconf.parse(environ, data)


def code_of(conf: Any = None, **env: str | None) -> int:
    with pytest.raises(CniError) as info:
        parse(conf, **env)
    return info.value.code


# -- the request ---------------------------------------------------------------------------------

def test_a_good_add_request():
    req = parse({**CONF, "stateDir": "/run/x", "profilePath": ["/etc/a", "/etc/b"], "runtimeConfig": {"mac": "x"}})
    assert req == netconf.Request(command="ADD", version="1.0.0", network="gw1net", profile="gw1",
                                  container="abc123", ifname="eth0", netns="/run/netns/c1", prev=None, valid=None,
                                  state_dir="/run/x", profile_path="/etc/a:/etc/b")
    assert parse({**CONF, "profilePath": "/etc/a:/etc/b"}).profile_path == "/etc/a:/etc/b"


def test_del_needs_no_namespace_and_no_profile_and_ignores_prev_result():
    conf = {k: v for k, v in CONF.items() if k != "profile"}
    req = parse({**conf, "prevResult": {"ips": []}}, CNI_COMMAND="DEL", CNI_NETNS=None)
    assert (req.netns, req.profile, req.prev) == (None, None, None)


def test_gc_reads_the_valid_attachments():
    conf = {**CONF, "cniVersion": "1.1.0",
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]}
    req = netconf.parse({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, json.dumps(conf).encode())
    assert req.valid == frozenset({("a", "eth0"), ("b", "net1")}) and req.container is None


@pytest.mark.parametrize("conf, env, code", [
    (b"", {}, 6),
    (b"{", {}, 6),
    (b"\xff", {}, 6),
    (b"[1, 2]", {}, 6),
    ({k: v for k, v in CONF.items() if k != "cniVersion"}, {}, 1),
    ({**CONF, "cniVersion": 1}, {}, 6),
    ({**CONF, "cniVersion": "0.3.1"}, {}, 1),
    ({**CONF, "cniVersion": "2.0.0"}, {}, 1),
    ({**CONF, "type": "bridge"}, {}, 7),
    ({**CONF, "name": ""}, {}, 7),
    ({**CONF, "name": 5}, {}, 7),
    ({k: v for k, v in CONF.items() if k != "profile"}, {}, 7),
    ({**CONF, "profile": ["gw1"]}, {}, 7),
    ({**CONF, "ipam": {"type": "host-local"}}, {}, 2),
    ({**CONF, "stateDir": "run/x"}, {}, 7),
    ({**CONF, "profilePath": ["etc"]}, {}, 7),
    ({**CONF, "profilePath": 3}, {}, 7),
    ({**CONF, "prevResult": []}, {}, 6),
    (CONF, {"CNI_COMMAND": "CHECK"}, 7),
    (CONF, {"CNI_COMMAND": "GC"}, 1),
    (CONF, {"CNI_COMMAND": "STATUS"}, 1),
    ({**CONF, "cniVersion": "1.1.0"}, {"CNI_COMMAND": "GC"}, 7),
    ({**CONF, "cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": "a"}]}, {"CNI_COMMAND": "GC"}, 7),
    (CONF, {"CNI_COMMAND": None}, 4),
    (CONF, {"CNI_COMMAND": "add"}, 4),
    (CONF, {"CNI_CONTAINERID": None}, 4),
    (CONF, {"CNI_CONTAINERID": "-abc"}, 4),
    (CONF, {"CNI_CONTAINERID": "a/b"}, 4),
    (CONF, {"CNI_CONTAINERID": "a" * 1025}, 4),
    (CONF, {"CNI_IFNAME": None}, 4),
    (CONF, {"CNI_IFNAME": "eth0-is-too-long"}, 4),
    (CONF, {"CNI_IFNAME": "a/b"}, 4),
    (CONF, {"CNI_NETNS": None}, 4),
    (CONF, {"CNI_NETNS": "run/netns/c1"}, 4),
    (CONF, {"CNI_COMMAND": "CHECK", "CNI_NETNS": None}, 7),  # no prevResult: found first
])
def test_each_refusal_has_its_code(conf, env, code):
    assert code_of(conf, **env) == code


def test_versions_compare_as_numbers():
    assert netconf.version_key("1.10.0") > netconf.version_key("1.9.0") > netconf.version_key("0.4.0")
    assert netconf.version_key("x") == (0,)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=12)
KEYS = ["cniVersion", "name", "type", "profile", "ipam", "stateDir", "profilePath", "prevResult",
        "cni.dev/valid-attachments"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), command=st.sampled_from([*netconf.COMMANDS, "", "X"]),
       env=st.dictionaries(st.sampled_from(["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]), st.text(max_size=70)))
def test_any_bytes_and_environment_give_a_request_or_a_cni_error(data, command, env):
    try:
        if command == "VERSION":
            netconf.version_of(data)
        else:
            netconf.parse({**env, "CNI_COMMAND": command}, data)
    except CniError as exc:
        assert exc.code in CODES and exc.msg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(KEYS), JSON, max_size=4),
       command=st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS"]),
       env=st.dictionaries(st.sampled_from(["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]), st.text(max_size=70)))
def test_any_values_of_the_keys_give_a_request_or_a_cni_error(changes, command, env):
    conf = {**CONF, "cniVersion": "1.1.0", **changes}
    try:
        req = netconf.parse({**ENV, **env, "CNI_COMMAND": command}, json.dumps(conf).encode())
    except CniError as exc:
        assert exc.code in CODES and exc.msg
        return
    if command in ("ADD", "CHECK"):  # what the engine is handed is what the spec allows
        assert req.profile and req.netns and req.netns.startswith("/")
        assert names.ifname_problem(req.ifname or "") is None
        assert names.container_problem(req.container or "") is None


# -- the plugin's answers ---------------------------------------------------------------------------

def run(command: str | None, data: bytes, **env: str) -> tuple[int, Any]:
    stdin = sys.stdin
    import io

    class Stdin:
        buffer = io.BytesIO(data)

    sys.stdin = Stdin  # type: ignore[assignment]
    try:
        environ = {**env, **({"CNI_COMMAND": command} if command else {})}
        return plugin.run(environ)
    finally:
        sys.stdin = stdin


def test_version_answers_the_version_asked_in():
    assert run("VERSION", b'{"cniVersion": "0.4.0"}') == \
        (0, {"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    assert run("VERSION", b"")[1]["cniVersion"] == "0.1.0"
    status, out = run("VERSION", b"nope")
    assert status == 1 and out["code"] == 6


def test_errors_are_error_objects_in_the_configuration_s_version():
    status, out = run("ADD", json.dumps({**CONF, "cniVersion": "0.4.0"}).encode(), CNI_CONTAINERID="x",
                      CNI_IFNAME="eth0")
    assert status == 1 and out == {"cniVersion": "0.4.0", "code": 4, "msg": "CNI_NETNS is missing",
                                   "details": "CNI_COMMAND ADD needs CNI_NETNS"}
    status, out = run(None, b"{}")
    assert status == 1 and out["code"] == 4 and out["cniVersion"] == "1.0.0"


def test_an_unexpected_exception_is_code_999_with_its_message_and_never_a_traceback(monkeypatch, capsys):
    def boom(req):
        raise KeyError("surprise")

    monkeypatch.setitem(plugin.VERBS, "ADD", boom)
    status, out = run("ADD", json.dumps(CONF).encode(), **{k: v for k, v in ENV.items() if k != "CNI_COMMAND"})
    assert status == 1 and out["code"] == 999 and out["details"] == "KeyError: 'surprise'"
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("exc, code", [
    (lambda: __import__("nsrun.engine.attachment", fromlist=["Busy"]).Busy("held"), 11),
    (lambda: __import__("nsrun.engine.attachment", fromlist=["Mismatch"]).Mismatch("route"), 101),
    (lambda: __import__("nsrun.engine.resources.namespace", fromlist=["IfnameTaken"]).IfnameTaken("eth0"), 4),
    (lambda: UsageError("bridge br9 does not exist"), 7),
    (lambda: engine.Attached("twice"), 100),
])
def test_nsrun_s_own_errors_map_to_codes(monkeypatch, exc, code):
    def fail(req):
        raise exc()

    monkeypatch.setitem(plugin.VERBS, "ADD", fail)
    status, out = run("ADD", json.dumps(CONF).encode(), **{k: v for k, v in ENV.items() if k != "CNI_COMMAND"})
    assert status == 1 and out["code"] == code and out["details"] == str(exc())


# -- Results ----------------------------------------------------------------------------------------

OURS = {"interfaces": [{"name": "nsr0123456789", "mac": "aa:bb:cc:dd:ee:ff"},
                       {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/c1"}],
        "ips": [{"address": "192.168.1.100/24", "gateway": "192.168.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "192.168.1.1"}],
        "dns": {"nameservers": ["192.168.1.1"]}}


def test_a_result_in_1_0_0_and_0_4_0():
    out = results.in_version(OURS, "1.0.0")
    assert out == {"cniVersion": "1.0.0", **OURS}
    old = results.in_version(OURS, "0.4.0")
    assert old["cniVersion"] == "0.4.0" and old["ips"] == [{**OURS["ips"][0], "version": "4"}]
    assert "version" not in OURS["ips"][0]  # the input is left as it was
    assert results.in_version(old, "1.0.0")["ips"] == OURS["ips"]  # a 0.4.0 prevResult, in 1.0.0
    empty = results.in_version({"interfaces": [], "ips": [], "routes": [], "dns": {}}, "1.0.0")
    assert empty == {"cniVersion": "1.0.0"}


def test_a_prev_result_comes_first_and_our_indices_move_along():
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo0"}], "ips": [{"address": "10.0.0.2/8", "interface": 0}],
            "routes": [{"dst": "10.0.0.0/8"}], "dns": {"nameservers": ["10.0.0.1"]}}
    out = results.merged(prev, OURS)
    assert [i["name"] for i in out["interfaces"]] == ["lo0", "nsr0123456789", "eth0"]
    assert [ip["interface"] for ip in out["ips"]] == [0, 2]
    assert out["routes"] == prev["routes"] + OURS["routes"]
    assert out["dns"] == prev["dns"] and "cniVersion" not in out
    assert results.merged(None, OURS) == OURS
    assert results.merged({"dns": {}}, OURS)["dns"] == OURS["dns"]


def test_error_objects():
    assert results.error(7, "bad", "why", "1.1.0") == {"cniVersion": "1.1.0", "code": 7, "msg": "bad", "details": "why"}
    assert results.error(4, "bad") == {"cniVersion": "1.0.0", "code": 4, "msg": "bad"}


# -- names and records ------------------------------------------------------------------------------

@given(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=80),
       st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=15))
def test_an_attachment_s_name_is_a_valid_namespace_name_of_its_own_kind(container, ifname):
    name = names.cni_name(container, ifname)
    assert names.check_name(name) == name and names.is_cni_name(name) and len(name) == 26
    assert not names.is_ephemeral(name) and names.cni_name(container, ifname) == name


def test_attachment_names_tell_container_and_interface_apart():
    assert names.cni_name("ab", "c") != names.cni_name("a", "bc")
    assert names.cni_name("a", "eth0") != names.cni_name("a", "net1")
    assert names.container_problem("4f3e.2d_1c-0b") is None
    assert names.container_problem("") and names.container_problem("_a") and names.container_problem("a b")


def _rec(**kw: Any) -> NsRecord:
    base = dict(name="n", profile="nat", profile_source="/p/nat.toml", mode="nat", bridge="nsrun0", veth="nsr0",
                persistent=True, created=1.0, state="up", address="10.251.0.2", prefixlen=24, gateway="10.251.0.1",
                dns=False, owner_pid=None, owner_start=None)
    return NsRecord(**{**base, **kw})  # type: ignore[arg-type]


def test_an_adopted_record_round_trips_and_others_carry_none_of_its_keys():
    rec = _rec(netns="/run/netns/c1", netns_id="4:4026532000", ifname="net1", container="abc", network="gw1net")
    data = rec.to_json()
    assert NsRecord.from_json(json.loads(json.dumps(data))) == rec and rec.adopted
    plain = _rec()
    assert not plain.adopted and not set(plain.to_json()) & {"netns", "netns_id", "ifname", "container", "network"}
    assert NsRecord.from_json(plain.to_json()) == plain


def test_up_adopts_an_attachment_only_as_itself_and_only_once(monkeypatch):
    adopt = engine.Adopt("/run/netns/c1", "eth0", "abc", "net")
    mine = _rec(netns="/run/netns/c1", netns_id="1:2", ifname="eth0", container="abc", network="net")
    engine._adoptable("n", None, adopt)
    engine._adoptable("n", _rec(), None)
    with pytest.raises(UsageError, match="is the CNI attachment of container abc"):
        engine._adoptable("n", mine, None)  # `nsrun up` of an attachment's name
    with pytest.raises(UsageError, match="recorded for a namespace of nsrun"):
        engine._adoptable("n", _rec(), adopt)
    with pytest.raises(UsageError, match="recorded for another attachment"):
        engine._adoptable("n", mine._replace(container="xyz"), adopt)
    monkeypatch.setattr("nsrun.engine.record.ns_alive", lambda rec: True)
    with pytest.raises(engine.Attached, match="attached already"):
        engine._adoptable("n", mine, adopt)
    engine._adoptable("n", mine._replace(state="creating"), adopt)  # a crashed ADD: up clears it
    monkeypatch.setattr("nsrun.engine.record.ns_alive", lambda rec: False)
    engine._adoptable("n", mine, adopt)  # its namespace is gone: up clears it


# -- a lean start -----------------------------------------------------------------------------------

PROBE = """
import io, json, sys
sys.stdin = io.TextIOWrapper(io.BytesIO(sys.argv[1].encode()))
from nsrun.cni import plugin
code, out = plugin.run()
print(json.dumps([code, out, sorted(sys.modules)]))
"""


def _modules(command: str, conf: dict[str, Any], **env: str) -> tuple[int, Any, list[str]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "NSRUN_"))}
    environ.update(CNI_COMMAND=command, PYTHONPATH=str(REPO), **env)
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(conf)], env=environ,
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    code, out, mods = json.loads(r.stdout)
    return code, out, mods


HEAVY = ("pyroute2", "iptc", "nsrun.engine.firewall", "typer", "nsrun.cli")


def test_version_and_refusals_import_nothing_of_the_engine():
    for command, conf, env in (("VERSION", {"cniVersion": "1.0.0"}, {}),
                               ("ADD", {**CONF, "cniVersion": "9"}, {}),
                               ("ADD", CONF, {"CNI_CONTAINERID": "x", "CNI_IFNAME": "eth0"})):
        code, out, mods = _modules(command, conf, **env)
        assert [m for m in mods if m.startswith(("nsrun.engine", "nsrun.profile", "tomllib", *HEAVY))] == [], \
            (command, out)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: DEL runs as root")
def test_a_del_of_nothing_imports_no_netlink_library_nor_profile(tmp_path):
    code, out, mods = _modules("DEL", CONF, CNI_CONTAINERID="x", CNI_IFNAME="eth0",
                               NSRUN_STATE_DIR=str(tmp_path / "state"))
    assert (code, out) == (0, None)
    assert [m for m in mods if m.startswith(("nsrun.profile", "tomllib", *HEAVY))] == []
    assert not (tmp_path / "state").exists()  # nothing recorded there: nothing made either


# -- installed as `nsrun` in the plugin directories -----------------------------------------------

def test_the_cni_launcher_starts_the_plugin_isolated(tmp_path):
    from nsrun.cli import launcher

    path = tmp_path / "nsrun"
    body = launcher.write(str(path), sys.executable, "cni")
    assert body.splitlines()[0] == f"#!{os.path.abspath(sys.executable)} -IS"
    assert "from nsrun.cni.plugin import main\n" in body and os.access(path, os.X_OK)
    r = subprocess.run([str(path)], input='{"cniVersion": "1.0.0"}', capture_output=True, text=True, timeout=60,
                       env={"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "")})
    assert (r.returncode, json.loads(r.stdout)["supportedVersions"]) == (0, ["0.4.0", "1.0.0", "1.1.0"]), r.stderr
    assert launcher.main(["--cni", str(tmp_path / "again")]) == 0
    assert "nsrun.cni.plugin" in (tmp_path / "again").read_text()


def test_install_sh_and_pyproject_install_the_plugin():
    install = (REPO / "install.sh").read_text()
    assert '"$venv/bin/python" -I -m nsrun.cli.launcher --cni "$dir/nsrun"' in install
    assert "cni_dirs=/usr/lib/cni" in install and "/opt/cni/bin" in install
    assert 'nsrun-cni = "nsrun.cni.plugin:main"' in (REPO / "pyproject.toml").read_text()
