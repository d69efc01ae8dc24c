"""The policy for callers without root (nsrun/policy.py): parsing, the checks, the file.

Pure logic, no network. The checks are compared with a model written here from the
documented rules (docs/policy.md), over users, groups, profiles and rules that hypothesis
varies; the file checks need root (ownership) and write only under pytest's tmp_path.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import REPO
from nsrun.service import policy
from nsrun import profile
from nsrun.service.policy import Caller, Policy, PolicyError

SRC = "/etc/nsrun/policy.toml"
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the ownership checks need root")


def toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):  # a basic string: control characters, quote and backslash escaped
        return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F or c in '"\\' else c
                             for c in value) + '"'
    return json.dumps(value)


def render(rules: list[dict[str, Any]], top: dict[str, Any] | None = None) -> str:
    lines = [f"{k} = {toml_value(v)}" for k, v in (top or {}).items()]
    for rule in rules:
        lines.append("[[allow]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in rule.items()]
    return "\n".join(lines) + "\n"


def error_of(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        policy.parse(text, SRC)
    msg = str(info.value)
    assert msg.startswith(SRC) and "\n" not in msg and "\r" not in msg, repr(msg)
    return info.value


# -- strategies --------------------------------------------------------------------------

account = st.from_regex(r"[a-z_][a-z0-9_-]{0,6}", fullmatch=True)
ident = st.integers(min_value=1, max_value=70000)
profile_name = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,6}", fullmatch=True)
who = st.lists(st.one_of(account, ident), max_size=4)


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    users, groups = draw(who), draw(who)
    if not users and not groups:
        users = [draw(st.one_of(account, ident))]
    if users or draw(st.booleans()):
        rule["users"] = users
    if groups or draw(st.booleans()):
        rule["groups"] = groups
    if draw(st.booleans()):
        rule["profiles"] = draw(st.lists(st.one_of(profile_name, st.just("*")), max_size=4))
    if draw(st.booleans()):
        rule["limit"] = draw(st.integers(min_value=0, max_value=50))
    return rule


@st.composite
def callers(draw: st.DrawFn) -> Caller:
    name = draw(st.one_of(st.none(), account))
    groups = tuple(draw(st.lists(ident, max_size=4)))
    group_names = tuple(draw(st.lists(account, max_size=3)))
    return Caller(draw(ident), draw(ident), groups, name, group_names)


def model_matches(rule: dict[str, Any], c: Caller) -> bool:
    users, groups = rule.get("users", []), rule.get("groups", [])
    return (c.uid in users or (c.name is not None and c.name in users)
            or bool({c.gid, *c.groups} & {g for g in groups if isinstance(g, int)})
            or bool(set(c.group_names) & {g for g in groups if isinstance(g, str)}))


# -- the checks against the model --------------------------------------------------------

@PROPS
@given(st.lists(rules(), max_size=4), callers(), profile_name,
       st.one_of(st.none(), st.integers(min_value=0, max_value=50)))
def test_may_run_and_limit_follow_the_rules(raw: list[dict[str, Any]], c: Caller, prof: str,
                                            default: int | None) -> None:
    top = {"limit": default} if default is not None else {}
    pol = policy.parse(render(raw, top), SRC)
    matching = [r for r in raw if model_matches(r, c)]
    allowed = any(prof in r.get("profiles", []) or "*" in r.get("profiles", []) for r in matching)
    answer = pol.may_run(c, prof)
    assert (answer is None) == allowed, (answer, raw, c)
    if answer is not None:
        assert "\n" not in answer and str(c.uid) in answer
    fallback = default if default is not None else policy.DEFAULT_LIMIT
    assert pol.limit(c) == max((r.get("limit", fallback) for r in matching), default=0)


@PROPS
@given(st.lists(rules(), max_size=3), callers(), st.text(max_size=20), st.sampled_from(["/", ".toml", "."]),
       st.integers(min_value=0, max_value=20))
def test_a_profile_path_is_never_allowed(raw: list[dict[str, Any]], c: Caller, text: str, mark: str,
                                         at: int) -> None:
    """Whatever the rules say ("*" included, the caller matched): a name that the profile
    path would take as a file (a '/', a .toml suffix) or a hidden one is refused."""
    for r in raw:
        r["profiles"] = ["*"]
        r["users"] = [*r.get("users", []), c.uid]
    pol = policy.parse(render(raw), SRC)
    if mark == "/":
        name = text[:at] + "/" + text[at:]
    elif mark == ".toml":
        name = text + ".toml"
    else:
        name = "." + text
    if raw:
        assert profile.is_path_spec(name) or name.startswith(".")
    assert pol.may_run(c, name) is not None


@PROPS
@given(st.text(max_size=30))
def test_allowed_profile_names_are_plain(name: str) -> None:
    """Anything a "*" policy allows is a plain name that profile.find looks up on the path."""
    pol = policy.parse(render([{"users": [1000], "profiles": ["*"]}]), SRC)
    if pol.may_run(Caller(1000, 1000), name) is None:
        assert not profile.is_path_spec(name) and not name.startswith(".") and name
        assert all(ch.isascii() and (ch.isalnum() or ch in "_.-") for ch in name)


@PROPS
@given(callers(), st.sampled_from(["may_run", "may_create", "may_enter", "may_remove"]))
def test_no_policy_file_allows_only_root(c: Caller, check: str) -> None:
    pol = Policy(SRC, (), present=False)
    args: tuple[Any, ...] = ("nat",) if check == "may_run" else ("ns1",) if check == "may_create" \
        else ("ns1", c.uid)
    answer = getattr(pol, check)(c, *args)
    assert answer is not None and "missing" in answer
    assert pol.limit(c) == 0
    root = Caller(0, 0)
    assert getattr(pol, check)(root, *args) is None and pol.limit(root) is None


@PROPS
@given(callers(), st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), ident)
def test_namespaces_own_and_granted(c: Caller, ns: str, other: int) -> None:
    text = render([{"users": [c.uid], "enter": ["shared-*"], "remove": ["tmp-{uid}-*"],
                    "create": ["{user}-*", "lab?"]}])
    pol = policy.parse(text, SRC)
    stranger = Caller(c.uid + 100000, c.gid + 100000)
    for check in (pol.may_enter, pol.may_remove):
        assert check(c, ns, c.uid) is None  # their own
        assert check(stranger, ns, stranger.uid) is not None  # not in the policy at all
        if other != c.uid:
            assert check(c, ns, other) is not None  # another's, not granted
            assert check(c, ns, None) is not None  # owner unknown: not theirs
    assert pol.may_enter(c, "shared-" + ns, other) is None
    assert pol.may_remove(c, "shared-" + ns, other) is None if other == c.uid else \
        pol.may_remove(c, "shared-" + ns, other) is not None
    assert pol.may_remove(c, f"tmp-{c.uid}-{ns}", other) is None
    assert (pol.may_create(c, f"{c.name}-{ns}") is None) == (c.name is not None)
    assert pol.may_create(c, "labx") is None and pol.may_create(c, "labxy") is not None
    assert pol.may_create(stranger, "labx") is not None


def test_create_defaults_to_names_of_the_users_own() -> None:
    """Issue 24, item 1: a rule without `create` lets its users create `{user}-*` only, so
    that no user can take a name root's units use (`vpn`, `gw1`) before root makes it."""
    pol = policy.parse(render([{"users": ["alice", 1500], "profiles": ["nat"]}]), SRC)
    alice = Caller(1001, 1001, (1001,), "alice", ("alice",))
    assert pol.rules[0].create == ("{user}-*",)
    assert pol.may_create(alice, "alice-work") is None
    for squat in ("work", "vpn", "gw1", "alice", "alicework", "bob-work", "xalice-work"):
        assert pol.may_create(alice, squat) is not None, squat
    assert pol.may_create(Caller(1500, 1500), "1500-x") is not None  # no name: no {user}
    anyname = policy.parse(render([{"users": ["alice"], "create": ["*"]}]), SRC)
    assert anyname.may_create(alice, "work") is None  # an explicit policy keeps working
    for bad in ("nsrun-0123abcd", "../etc", "a/b", ".hidden", "-x", "", "x" * 65):
        assert pol.may_create(alice, bad) is not None, bad
        assert pol.may_enter(alice, bad, alice.uid) is not None, bad
        assert anyname.may_create(alice, bad) is not None, bad
    none = policy.parse(render([{"users": ["alice"], "create": []}]), SRC)
    assert none.may_create(alice, "work") is not None
    assert none.may_enter(alice, "work", alice.uid) is None


meta_name = st.text(alphabet="abx3*?[]!^-._", min_size=1, max_size=8)
ns_like = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,12}", fullmatch=True)


@PROPS
@given(meta_name, ns_like, st.sampled_from(["{user}-*", "{user}", "x{user}?", "{user}*{uid}"]))
@example("x3b*", "x3bob-vpn", "{user}-*")
@example("?", "0", "{user}")
@example("[a-z]", "b", "{user}")
def test_user_and_uid_are_matched_literally(name: str, ns: str, pattern: str) -> None:
    """Issue 24, item 15: `{user}` and `{uid}` stand for the caller's name and uid as they
    are: a `*`, `?` or `[...]` in a user name is no pattern (a user `x3b*` does not get
    `x3bob-*`). The model: the pattern's own `*` and `?` are its only wildcards."""
    pol = policy.parse(render([{"users": [1000], "create": [pattern], "enter": [pattern],
                                "remove": [pattern]}]), SRC)
    c = Caller(1000, 1000, (), name, ())
    model = ""
    for part in re.split(r"(\{user\}|\{uid\})", pattern):
        if part in ("{user}", "{uid}"):
            model += re.escape(name if part == "{user}" else "1000")
        else:
            model += "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in part)
    want = re.fullmatch(model, ns, re.DOTALL) is not None
    assert (pol.may_create(c, ns) is None) == want, (name, ns, pattern)
    assert (pol.may_enter(c, ns, 2000) is None) == want
    assert (pol.may_remove(c, ns, 2000) is None) == want


def test_a_user_named_like_a_pattern_gets_no_one_elses_names() -> None:
    pol = policy.parse(render([{"users": [1000, 1001], "create": ["{user}-*"]}]), SRC)
    for name in ("x3b*", "x3b?b", "x3[a-z]ob", "x3?o*"):
        assert pol.may_create(Caller(1000, 1000, (), name, ()), "x3bob-vpn") is not None, name
    assert pol.may_create(Caller(1001, 1001, (), "x3bob", ()), "x3bob-vpn") is None


def test_refusals_say_who_what_and_where() -> None:
    pol = policy.parse(render([{"groups": ["netlab"], "profiles": ["nat"], "limit": 2}]), SRC)
    bob = Caller(1002, 1002, (1002,), "bob", ("bob",))
    carol = Caller(1003, 1003, (1003, 4000), "carol", ("carol", "netlab"))
    assert pol.may_run(bob, "nat") == f"user bob (uid 1002) is not allowed by the policy ({SRC})"
    assert pol.may_run(carol, "nat") is None
    assert pol.may_run(carol, "gw1") == f"user carol (uid 1003) may not use profile 'gw1' ({SRC})"
    assert pol.may_run(carol, "/tmp/evil.toml") is not None
    assert "may name profiles only" in (pol.may_run(carol, "/tmp/evil.toml") or "")
    assert pol.limit(carol) == 2 and pol.limit(bob) == 0


# -- the schema ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, where", [
    ('colour = "red"\n', "unknown key 'colour'"),
    ('[[allow]]\nusers = ["a"]\nprofile = ["nat"]\n', "allow[1]: unknown key 'profile'"),
    ('version = 2\n', "version"),
    ('limit = -1\n', "limit: -1 is out of range"),
    ('limit = true\n', "limit: must be an integer"),
    ('[allow]\nusers = ["a"]\n', "allow: must be an array of tables"),
    ('[[allow]]\nusers = "alice"\n', "allow[1].users: must be an array"),
    ('[[allow]]\nusers = [1.5]\n', "allow[1].users: must hold names"),
    ('[[allow]]\nusers = ["1000"]\n', "allow[1].users: '1000' is not a valid user name"),
    ('[[allow]]\ngroups = ["bad name"]\n', "allow[1].groups: 'bad name' is not a valid group name"),
    ('[[allow]]\nprofiles = ["nat"]\n', "allow[1]: names no users and no groups"),
    ('[[allow]]\nusers = []\ngroups = []\n', "allow[1]: names no users and no groups"),
    ('[[allow]]\nusers = ["a"]\nprofiles = ["/tmp/x.toml"]\n', "allow[1].profiles: profile '/tmp/x.toml' is a path"),
    ('[[allow]]\nusers = ["a"]\nprofiles = ["x.toml"]\n', "is a path"),
    ('[[allow]]\nusers = ["a"]\nprofiles = [".x"]\n', "invalid profile name"),
    ('[[allow]]\nusers = ["a"]\nprofiles = [3]\n', "allow[1].profiles: must hold strings"),
    ('[[allow]]\nusers = ["a"]\ncreate = ["a/b"]\n', "allow[1].create: 'a/b' is not a namespace name pattern"),
    ('[[allow]]\nusers = ["a"]\nenter = ["[ab]"]\n', "allow[1].enter"),
    ('[[allow]]\nusers = ["a"]\nremove = [".x*"]\n', "allow[1].remove"),
    ('[[allow]]\nusers = ["a"]\nlimit = 100001\n', "allow[1].limit"),
    ('[[allow]]\nusers = [-1]\n', "is not a valid id"),
    ('[[allow]\n', "TOML syntax error"),
])
def test_schema_refusals(text: str, where: str) -> None:
    assert where in str(error_of(text))


@PROPS
@given(st.text(min_size=1, max_size=12).filter(lambda k: k not in policy.RULE_KEYS))
def test_any_unknown_rule_key_is_refused(key: str) -> None:
    text = f"[[allow]]\nusers = [\"a\"]\n{toml_value(key)} = 1\n"
    assert "unknown key" in str(error_of(text))


def test_documented_example_parses() -> None:
    """The example in docs/policy.md is a valid policy, and means what the page says."""
    doc = (REPO / "docs" / "policy.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    pol = policy.parse(example, SRC)
    alice = Caller(1001, 1001, (1001,), "alice", ("alice",))
    dev = Caller(1005, 1005, (1005, 3000), "dave", ("dave", "netlab"))
    assert pol.may_run(alice, "gw1") is None and pol.may_run(alice, "nat") is None
    assert pol.may_run(dev, "nat") is None and pol.may_run(dev, "gw1") is not None
    assert pol.may_create(dev, "dave-test") is None and pol.may_create(dev, "test") is not None
    assert pol.may_create(dev, "lab-1") is None
    assert pol.may_create(alice, "alice-vpn") is None and pol.may_create(alice, "vpn") is not None
    assert pol.may_enter(dev, "shared-lab", 0) is None and pol.may_remove(dev, "shared-lab", 0) is not None
    assert pol.limit(alice) == 8 and pol.limit(dev) == 2
    bob = Caller(1002, 1002, (1002,), "bob", ("bob",))
    assert pol.may_publish(bob, [8080]) is None and pol.may_publish(bob, [80]) is not None
    assert pol.may_publish(alice, [8080]) is not None  # publish: false unless a rule grants it


# -- the caller ----------------------------------------------------------------------------

def test_caller_from_the_user_database() -> None:
    nobody = Caller.from_uid(65534, 65534)
    assert nobody.name == "nobody" and 65534 in nobody.groups
    import pwd

    root = pwd.getpwuid(0)
    me = Caller.from_uid(0, 0)
    assert me.name == root.pw_name and set(me.groups) == set(os.getgrouplist(root.pw_name, 0))
    ghost = Caller.from_uid(3999999, 3999998)
    assert ghost.name is None and ghost.groups == (3999998,)


# -- the file ------------------------------------------------------------------------------

GOOD = '[[allow]]\nusers = ["alice"]\nprofiles = ["nat"]\n'


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    return d


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


@root_only
def test_load_good_and_missing(etc: Path) -> None:
    pol = policy.load(str(write(etc / "policy.toml", GOOD)))
    assert pol.present and len(pol.rules) == 1 and pol.source == str(etc / "policy.toml")
    missing = policy.load(str(etc / "none.toml"))
    assert not missing.present and missing.rules == ()
    assert not policy.load(str(etc / "nodir" / "policy.toml")).present


@root_only
@pytest.mark.parametrize("case, reason", [
    ("group-writable", "group- or world-writable"),
    ("world-writable", "group- or world-writable"),
    ("not-root", "owned by uid 65534"),
    ("symlink", "symbolic link"),
    ("dir-symlink", "symbolic link"),
    ("dir-writable", "is group- or world-writable"),
    ("dir-not-root", "owned by uid 65534"),
    ("directory", "not a regular file"),
    ("large", "larger than"),
    ("binary", "not UTF-8"),
    ("bad-schema", "unknown key"),
])
def test_load_refuses(etc: Path, case: str, reason: str) -> None:
    path = etc / "policy.toml"
    if case == "group-writable":
        write(path, GOOD, 0o664)
    elif case == "world-writable":
        write(path, GOOD, 0o646)
    elif case == "not-root":
        write(path, GOOD)
        os.chown(path, 65534, 65534)
    elif case == "symlink":
        os.symlink(write(etc / "real.toml", GOOD), path)
    elif case == "dir-symlink":
        real = etc / "real"
        real.mkdir(mode=0o755)
        write(real / "policy.toml", GOOD)
        os.symlink(real, etc / "link")
        path = etc / "link" / "policy.toml"
    elif case == "dir-writable":
        os.chmod(etc, 0o777)
        write(path, GOOD)
    elif case == "dir-not-root":
        write(path, GOOD)
        os.chown(etc, 65534, 65534)
    elif case == "directory":
        path.mkdir()
    elif case == "large":
        write(path, GOOD + "#" * policy.MAX_FILE_BYTES)
    elif case == "binary":
        path.write_bytes(b"\xff\xfe")
        os.chmod(path, 0o644)
    else:
        write(path, "who = 1\n")
    with pytest.raises(PolicyError) as info:
        policy.load(str(path))
    msg = str(info.value)
    assert reason in msg and "\n" not in msg, msg


@root_only
def test_sticky_world_writable_directory_is_accepted(etc: Path) -> None:
    """/tmp-like directories (sticky: nobody else can replace root's file) do not refuse."""
    os.chmod(etc, 0o1777)
    assert policy.load(str(write(etc / "policy.toml", GOOD))).present


toml_values = st.recursive(
    st.one_of(st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1), st.floats(allow_nan=False),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from([*policy.RULE_KEYS, "x"]), inner, max_size=4)),
    max_leaves=12,
)


@PROPS
@given(st.dictionaries(st.sampled_from([*policy.TOP_KEYS, "other"]), toml_values, max_size=3),
       st.lists(st.dictionaries(st.sampled_from([*policy.RULE_KEYS, "x"]), toml_values, max_size=5),
                max_size=3))
def test_any_document_is_a_policy_or_one_refusal(top: dict[str, Any], rules_: list[dict[str, Any]]) -> None:
    """Whatever a parsed TOML document holds: a Policy, or a PolicyError of one line."""
    data = dict(top)
    if rules_ and "allow" not in data:
        data["allow"] = rules_
    try:
        pol = policy.validate(data, SRC)
    except PolicyError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(SRC)
        return
    for rule in pol.rules:
        assert rule.uids or rule.user_names or rule.gids or rule.group_names
        assert all(p == "*" or policy.profile_name_problem(p) is None for p in rule.profiles)
