"""WireGuard configurations (nsrun/wgconf.py): parsing, validation, files; no network (the
resolver is a fake, so no name is ever looked up)."""

from __future__ import annotations

import base64
import json
import ipaddress
import os
import pickle
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nsrun import wgconf
from nsrun.errors import ProfileError, UsageError

SRC = "/etc/nsrun/wg/t.conf"
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IS_ROOT = os.geteuid() == 0

KEYS = [base64.b64encode(bytes([i]) * 32).decode() for i in range(1, 6)]
PRIV, PUB, PSK, PUB2 = KEYS[0], KEYS[1], KEYS[2], KEYS[3]


def fake_resolver(host: str, port: int) -> tuple[str, int]:
    table = {"vpn.example.net": "192.0.2.1", "v6.example.net": "2001:db8::1"}
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    if host not in table:
        raise OSError(-2, "Name or service not known")
    return table[host], port


def parse(text: str) -> wgconf.WgConfig:
    return wgconf.parse(text, SRC, fake_resolver)


def error_of(text: str) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        parse(text)
    msg = str(info.value)
    assert msg.startswith(SRC + ": ") and "\n" not in msg and "\r" not in msg, msg
    return info.value


GOOD = f"""# a provider's file
[Interface]
PrivateKey = {PRIV}
Address = 10.2.0.2/32, fd00:2::2/128
Address = 10.3.0.2
DNS = 10.2.0.1, fd00:2::1, vpn.example
MTU = 1400

[Peer]
PublicKey = {PUB}
PresharedKey = {PSK}
Endpoint = vpn.example.net:51820
AllowedIPs = 0.0.0.0/0, ::/0
PersistentKeepalive = 25

[Peer]
PublicKey = {PUB2}
Endpoint = [2001:db8::7]:4500
AllowedIPs = 10.9.0.0/16
"""


def test_a_full_config() -> None:
    c = parse(GOOD)
    assert [str(a) for a in c.addresses] == ["10.2.0.2/32", "fd00:2::2/128", "10.3.0.2/32"]
    assert c.dns == ("10.2.0.1", "fd00:2::1") and c.search == ("vpn.example",)
    assert c.mtu == 1400 and c.has_v6
    p1, p2 = c.peers
    assert p1.endpoint == ("192.0.2.1", 51820) and p1.keepalive == 25 and p1.preshared_key is not None
    assert [str(n) for n in p1.allowed_ips] == ["0.0.0.0/0", "::/0"]
    assert p2.endpoint == ("2001:db8::7", 4500) and p2.preshared_key is None and p2.keepalive == 0
    assert c.private_key.hex() == base64.b64decode(PRIV).hex()


def test_keys_never_show() -> None:
    c = parse(GOOD)
    for shown in (repr(c), str(c), f"{c}", f"{c.private_key}", str(c.summary()), repr(c.peers)):
        for key in (PRIV, PUB, PSK, PUB2):
            assert key not in shown and base64.b64decode(key).hex() not in shown
    with pytest.raises(TypeError):
        pickle.dumps(c.private_key)


def test_keys_never_in_errors() -> None:
    near = PRIV[:-2] + "A="  # right length, wrong padding bits or not: never echoed
    for bad in (PRIV[:-1], PRIV + "A", near.replace("A", "!"), "x" * 44):
        msg = str(error_of(GOOD.replace(f"PrivateKey = {PRIV}", f"PrivateKey = {bad}")))
        assert "line 3: PrivateKey: is not a WireGuard key" in msg and bad not in msg


def test_a_key_in_the_wrong_field_is_not_echoed() -> None:
    msg = str(error_of(GOOD.replace("Address = 10.3.0.2", f"Address = {PRIV}")))
    assert "line 5: Address:" in msg and PRIV not in msg


# Issue 27: a key in any field, or as a line of its own, glued to anything, is never echoed
# (Endpoint = KEY:0 printed a private key: the redaction split words on spaces and commas).
# SECRET has no repeats, so any 8 characters of it in a message are a piece of it.
SECRET = base64.b64encode(bytes(range(7, 39))).decode()
GLUED = [f"{SECRET}:0", f"{SECRET}:51820x", f"[{SECRET}]", f"{SECRET},10.0.0.1", SECRET,
         f"[{SECRET}]:51820", f"{SECRET}:51820", f"x{SECRET}", f"{SECRET[:-1]}", f"{SECRET}={SECRET}"]
FIELDS = {  # field: the line of GOOD it replaces
    "PrivateKey": f"PrivateKey = {PRIV}", "Address": "Address = 10.3.0.2",
    "DNS": "DNS = 10.2.0.1, fd00:2::1, vpn.example", "MTU": "MTU = 1400", "ListenPort": "MTU = 1400",
    "PublicKey": f"PublicKey = {PUB}", "PresharedKey": f"PresharedKey = {PSK}",
    "Endpoint": "Endpoint = vpn.example.net:51820", "AllowedIPs": "AllowedIPs = 0.0.0.0/0, ::/0",
    "PersistentKeepalive": "PersistentKeepalive = 25",
}
BARE = {"before any section": "# a provider's file", "[Interface]": "Address = 10.3.0.2",
        "[Peer]": "PersistentKeepalive = 25"}


def assert_no_piece_of(secret: str, msg: str) -> None:
    low = msg.lower()  # key names are lowercased before they are shown
    pieces = [secret[i:i + 8] for i in range(len(secret) - 7)]
    assert not any(p.lower() in low for p in pieces), msg
    assert not re.search(r"[A-Za-z0-9+/]{40}", msg), msg


@pytest.mark.parametrize("form", GLUED)
@pytest.mark.parametrize("field", FIELDS)
def test_a_key_glued_to_anything_in_any_field_is_never_echoed(field: str, form: str) -> None:
    try:
        parse(GOOD.replace(FIELDS[field], f"{field} = {form}", 1))
    except ProfileError as exc:
        assert str(exc).startswith(SRC + ": ") and field.lower() in str(exc).lower(), str(exc)
        assert_no_piece_of(SECRET, str(exc))
    else:
        assert form == SECRET and field.endswith("Key"), (field, form)  # a key where one belongs


@pytest.mark.parametrize("form", GLUED)
@pytest.mark.parametrize("where", BARE)
def test_a_key_as_a_line_of_its_own_is_never_echoed(where: str, form: str) -> None:
    line = BARE[where]
    msg = str(error_of(GOOD.replace(line, f"{form}\n{line}" if where == "before any section" else f"{line}\n{form}", 1)))
    assert_no_piece_of(SECRET, msg)


@PROPS
@given(st.sampled_from(sorted(FIELDS)), st.text(":[],;@=x0-. /", max_size=4), st.text(":[],;@=x0-. /", max_size=4))
def test_a_key_between_any_glue_is_never_echoed(field: str, before: str, after: str) -> None:
    try:
        parse(GOOD.replace(FIELDS[field], f"{field} = {before}{SECRET}{after}", 1))
    except ProfileError as exc:
        assert_no_piece_of(SECRET, str(exc))


@pytest.mark.parametrize("text, where", [
    (GOOD.replace(f"PrivateKey = {PRIV}\n", ""), "[Interface]: PrivateKey: is required"),
    (GOOD.replace("Address = 10.2.0.2/32, fd00:2::2/128\nAddress = 10.3.0.2\n", ""), "Address: is required"),
    (GOOD.replace("10.3.0.2", "10.3.0.300"), "line 5: Address: 10.3.0.300 is not an IP address"),
    (GOOD.replace("10.3.0.2", "10.2.0.2"), "Address: lists an address twice"),
    (GOOD.split("[Peer]")[0], "[Peer]: is missing"),
    (GOOD.replace(f"PublicKey = {PUB2}", f"PublicKey = {PUB}"), "PublicKey: is the same as an earlier peer's"),
    (GOOD.replace(f"PublicKey = {PUB}\n", ""), "[Peer] at line 9: PublicKey: is required"),
    (GOOD.replace("vpn.example.net:51820", "nowhere.invalid:51820"), "line 12: Endpoint: nowhere.invalid does not resolve"),
    (GOOD.replace("vpn.example.net:51820", "vpn.example.net"), "Endpoint: vpn.example.net is not HOST:PORT"),
    (GOOD.replace("vpn.example.net:51820", "vpn.example.net:0"), "Endpoint:"),
    (GOOD.replace("[2001:db8::7]:4500", "2001:db8::7:4500"), "Endpoint:"),
    (GOOD.replace("MTU = 1400", "MTU = 1000"), "MTU: 1000 is below 1280"),
    (GOOD.replace("MTU = 1400", "MTU = 99999"), "MTU: 99999 is not an integer"),
    (GOOD.replace("PersistentKeepalive = 25", "PersistentKeepalive = soon"), "PersistentKeepalive:"),
    (GOOD.replace("MTU = 1400", "PostUp = iptables -F"), "line 7: postup: is not supported by nsrun"),
    (GOOD.replace("MTU = 1400", "Table = off"), "table: is not supported by nsrun"),
    (GOOD.replace("MTU = 1400", "Colour = blue"), "colour: is not a known [Interface] key"),
    (GOOD.replace("AllowedIPs = 10.9.0.0/16", "AllowedIPs = 10.9.0.0/40"), "AllowedIPs: 10.9.0.0/40"),
    (GOOD.replace("[Peer]\nPublicKey = " + PUB2, "[Peer]\nPublicKey = " + PUB2 + "\nEndpoint = x:1", 1), "Endpoint:"),
    (GOOD.replace("[Interface]", "[Interface]\n[Interface]"), "a second [Interface] section"),
    (GOOD.replace("[Peer]", "[Pear]", 1), "unknown section"),
    ("PrivateKey = " + PRIV, "comes before any [Interface] or [Peer] section"),
    ("", "[Interface]: is missing"),
    (GOOD.replace("DNS = 10.2.0.1, fd00:2::1, vpn.example", "DNS = vpn.example"), "DNS: names search domains but no server"),
    (GOOD.replace("DNS = 10.2.0.1, fd00:2::1, vpn.example", "DNS = 10.2.0.1 x"), "DNS: 10.2.0.1 x is neither"),
    (GOOD.replace("Endpoint = vpn.example.net:51820\n", "").replace("Endpoint = [2001:db8::7]:4500\n", ""),
     "Endpoint: no peer has one"),
])
def test_refusals_name_the_key(text: str, where: str) -> None:
    assert where in str(error_of(text))


def test_endpoint_resolution_happens_at_load() -> None:
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> tuple[str, int]:
        calls.append((host, port))
        return "203.0.113.9", port

    c = wgconf.parse(GOOD, SRC, resolver)
    assert calls == [("vpn.example.net", 51820), ("2001:db8::7", 4500)]
    assert c.peers[0].endpoint == ("203.0.113.9", 51820)
    assert c.peers[0].endpoint_text == "vpn.example.net:51820"


def test_numeric_endpoints_never_ask_a_resolver() -> None:
    assert wgconf.resolve("192.0.2.1", 51820) == ("192.0.2.1", 51820)
    assert wgconf.resolve("2001:db8::1", 1) == ("2001:db8::1", 1)


def test_keys_are_case_insensitive_and_comments_ignored() -> None:
    text = GOOD.lower().replace(PRIV.lower(), PRIV).replace(PUB.lower(), PUB).replace(PSK.lower(), PSK)
    text = text.replace(PUB2.lower(), PUB2) + "# trailing comment\n"
    assert len(parse(text).peers) == 2


# -- properties ---------------------------------------------------------------------------

keys = st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())
v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
prefix4 = st.tuples(v4, st.integers(0, 32)).map(lambda t: ipaddress.IPv4Interface((t[0], t[1])))
prefix6 = st.tuples(v6, st.integers(0, 128)).map(lambda t: ipaddress.IPv6Interface((t[0], t[1])))


@st.composite
def configs(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    priv = draw(keys)
    addrs = draw(st.lists(st.one_of(prefix4, prefix6), min_size=1, max_size=4, unique_by=lambda a: a.ip))
    peers = draw(st.lists(st.tuples(keys, st.one_of(st.none(), keys), st.one_of(v4, v6),
                                    st.integers(1, 65535), st.lists(st.one_of(prefix4, prefix6), max_size=3),
                                    st.integers(0, 65535)),
                          min_size=1, max_size=4, unique_by=lambda p: p[0]))
    mtu = draw(st.one_of(st.none(), st.integers(1280, 65535)))
    sep = draw(st.sampled_from([" = ", "=", "  =\t"]))
    text = f"[Interface]\nPrivateKey{sep}{priv}\n"
    text += "".join(f"Address{sep}{a}\n" for a in addrs)
    if mtu is not None:
        text += f"MTU{sep}{mtu}\n"
    for pub, psk, host, port, allowed, ka in peers:
        ep = f"[{host}]:{port}" if host.version == 6 else f"{host}:{port}"
        text += f"\n[Peer]\nPublicKey{sep}{pub}\nEndpoint{sep}{ep}\n"
        if psk:
            text += f"PresharedKey{sep}{psk}\n"
        if allowed:
            text += f"AllowedIPs{sep}{', '.join(str(n) for n in allowed)}\n"
        text += f"PersistentKeepalive{sep}{ka}\n"
    return text, {"priv": priv, "addrs": addrs, "peers": peers, "mtu": mtu}


@PROPS
@given(configs())
def test_valid_configs_round_trip(case: tuple[str, dict]) -> None:
    text, want = case
    c = parse(text)
    assert c.private_key.hex() == base64.b64decode(want["priv"]).hex()
    assert list(c.addresses) == want["addrs"] and c.mtu == want["mtu"]
    assert len(c.peers) == len(want["peers"])
    for got, (pub, psk, host, port, allowed, ka) in zip(c.peers, want["peers"]):
        assert got.public_key.hex() == base64.b64decode(pub).hex()
        assert (got.preshared_key.hex() if got.preshared_key else None) == (base64.b64decode(psk).hex() if psk else None)
        assert got.endpoint == (str(host), port) and got.keepalive == ka
        assert list(got.allowed_ips) == [n.network for n in allowed]
    shown = repr(c) + str(c.summary())
    assert want["priv"] not in shown and all(p[0] not in shown for p in want["peers"])


@PROPS
@given(configs(), st.integers(0, 10_000), st.text(min_size=1, max_size=8))
def test_any_corruption_is_a_one_line_error_or_a_valid_config(case: tuple[str, dict], at: int, junk: str) -> None:
    text, want = case
    at %= len(text) + 1
    bad = text[:at] + junk + text[at:]
    try:
        c = parse(bad)
    except ProfileError as exc:
        msg = str(exc)
        assert msg.startswith(SRC + ": ") and "\n" not in msg and "\r" not in msg
        assert want["priv"] not in msg and all(p[0] not in msg for p in want["peers"])
    else:
        assert c.peers and c.addresses


@PROPS
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises_anything_else(text: str) -> None:
    try:
        parse(text)
    except ProfileError as exc:
        assert "\n" not in str(exc)


# -- files --------------------------------------------------------------------------------

def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_files_others_may_read_or_write_are_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "t.conf", GOOD, mode)
    with pytest.raises(UsageError) as info:
        wgconf.load(path, fake_resolver)
    assert str(info.value) == f"{path}: refused: group or others may read or write it (mode {mode:04o}); chmod 600 it"


@pytest.mark.skipif(not IS_ROOT, reason="ownership is checked against root when run as root")
def test_files_not_owned_by_root_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "t.conf", GOOD, 0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(UsageError, match=r"refused: owned by uid 65534, not root"):
        wgconf.load(path, fake_resolver)


def test_a_good_file_loads_and_others_are_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.conf", GOOD, 0o600)
    assert len(wgconf.load(path, fake_resolver).peers) == 2
    with pytest.raises(UsageError, match="no such WireGuard configuration"):
        wgconf.load(tmp_path / "missing.conf", fake_resolver)
    with pytest.raises(UsageError, match="is not a regular file"):
        wgconf.load(tmp_path, fake_resolver)
    big = write(tmp_path / "big.conf", GOOD + "#" * wgconf.MAX_FILE_BYTES, 0o600)
    with pytest.raises(UsageError, match="is larger than"):
        wgconf.load(big, fake_resolver)
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"\xff\xfe")
    os.chmod(binary, 0o600)
    with pytest.raises(UsageError, match="is not UTF-8"):
        wgconf.load(binary, fake_resolver)


# -- the profile schema: mode = "wireguard" -------------------------------------------------

def test_profile_wireguard_mode() -> None:
    from nsrun import profile

    prof = profile.parse('mode = "wireguard"\nwireguard = "/etc/nsrun/wg/w.conf"\ndescription = "vpn"\n',
                         "/p/w.toml", "w")
    assert (prof.mode, prof.wireguard, prof.wired, prof.pool()) == ("wireguard", "/etc/nsrun/wg/w.conf", False, [])
    assert prof.resolved() == {"name": "w", "source": "/p/w.toml", "description": "vpn", "mode": "wireguard",
                               "wireguard": "/etc/nsrun/wg/w.conf"}


@pytest.mark.parametrize("text, want", [
    ('mode = "wireguard"\n', "/p/w.toml: wireguard: is required in wireguard mode"),
    ('mode = "wireguard"\nwireguard = "wg/w.conf"\n', "/p/w.toml: wireguard: 'wg/w.conf' is not an absolute path"),
    ('mode = "wireguard"\nwireguard = 5\n', "/p/w.toml: wireguard: must be a string, not int"),
    ('mode = "wireguard"\nwireguard = "/w.conf"\nsubnet = "10.0.0.0/24"\n', "/p/w.toml: subnet: is not used in wireguard mode"),
    ('mode = "nat"\nsubnet = "10.0.0.0/24"\nwireguard = "/w.conf"\n', "/p/w.toml: wireguard: is not used in nat mode"),
])
def test_profile_wireguard_refusals(text: str, want: str) -> None:
    from nsrun import profile

    with pytest.raises(ProfileError) as info:
        profile.parse(text, "/p/w.toml", "w")
    assert str(info.value).startswith(want), str(info.value)


def test_profiles_show_summarises_the_file_without_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from nsrun.commands import catalog

    conf = write(tmp_path / "w.conf", GOOD, 0o600)
    write(tmp_path / "w.toml", f'mode = "wireguard"\nwireguard = "{conf}"\n', 0o644)
    monkeypatch.setenv("NSRUN_PROFILE_PATH", str(tmp_path))
    catalog.show("w")
    out = capsys.readouterr().out
    assert f"wireguard = '{conf}'" in out
    assert "# wireguard address = 10.2.0.2/32, fd00:2::2/128, 10.3.0.2/32" in out
    assert "endpoint vpn.example.net:51820, allowed 0.0.0.0/0, ::/0, keepalive 25, preshared key" in out
    for key in (PRIV, PUB, PSK, PUB2):
        assert key not in out and base64.b64decode(key).hex() not in out
    os.chmod(conf, 0o644)
    catalog.show("w")
    assert "# wireguard file INVALID: " in capsys.readouterr().out


def test_profile_wireguard_key_is_listed_in_wireguard_mode() -> None:
    from nsrun import profile

    with pytest.raises(ProfileError, match=r"zzz: unknown key; known keys: .*probe_ms, forward, routes, firewall, publish, subnet6, range6, gateway6, isolate, allow, wireguard$"):
        profile.parse('mode = "wireguard"\nzzz = 1\n', "/p/w.toml", "w")
    with pytest.raises(ProfileError, match=r"wireguardd: unknown key \(did you mean 'wireguard'\?\)"):
        profile.parse('mode = "wireguard"\nwireguardd = "/w.conf"\n', "/p/w.toml", "w")


# -- nsrun.wireguard's pure parts --------------------------------------------------------------

@PROPS
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", min_size=1, max_size=64))
def test_wg_ifname_is_a_valid_derived_ifname(name: str) -> None:
    from nsrun import names

    ifname = names.wg_ifname(name)
    assert names.ifname_problem(ifname) is None and len(ifname) == 14
    assert names.is_wg_ifname(ifname) and not names.is_host_veth(ifname)
    assert not names.is_wg_ifname(names.host_veth(name))


def test_uapi_request_carries_hex_keys_and_every_peer_setting() -> None:
    from nsrun.engine import wgdevice

    c = parse(GOOD)
    req = wgdevice.uapi_config(c)
    assert req.endswith("\n\n") and req.count("\n\n") == 1
    lines = req.splitlines()
    assert lines[:2] == ["set=1", f"private_key={base64.b64decode(PRIV).hex()}"]
    assert "replace_peers=true" in lines
    i = lines.index(f"public_key={base64.b64decode(PUB).hex()}")
    assert lines[i + 1:i + 7] == [f"preshared_key={base64.b64decode(PSK).hex()}", "endpoint=192.0.2.1:51820",
                                  "persistent_keepalive_interval=25", "replace_allowed_ips=true",
                                  "allowed_ip=0.0.0.0/0", "allowed_ip=::/0"]
    j = lines.index(f"public_key={base64.b64decode(PUB2).hex()}")
    assert "endpoint=[2001:db8::7]:4500" in lines[j:] and "allowed_ip=10.9.0.0/16" in lines[j:]
    assert not any(k in req for k in (PRIV, PUB, PSK, PUB2))  # hex only, never base64


def test_the_records_wireguard_slice_round_trips_and_holds_no_key() -> None:
    from nsrun.engine.record import NsRecord

    rec = NsRecord(name="a", profile="wg", profile_source="/p/wg.toml", mode="wireguard", bridge=None,
                   veth=None, persistent=True, created=1.0, state="up", address=None, prefixlen=None,
                   gateway=None, dns=True, owner_pid=None, owner_start=None,
                   wireguard="userspace", wg_pid=5, wg_start=7)
    data = json.loads(json.dumps(rec.to_json()))
    assert NsRecord.from_json(data) == rec
    assert {k for k in data if "key" in k} == set()
