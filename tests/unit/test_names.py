"""Namespace names and the names derived from them (nsrun/names.py): pure logic, no network."""

from __future__ import annotations

import os
import posixpath
import re
import string
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import REPO
from nsrun import names
from nsrun.errors import UsageError

FAST = settings(max_examples=300, deadline=None)

NAME_CHARS = string.ascii_letters + string.digits + "_.-"
# What Linux's dev_valid_name() refuses, as bytes: NUL ends the C string early; isspace()
# of the kernel's ctype is \t \n \v \f \r, space, and 0xA0.
KERNEL_BAD_BYTES = set(b"/:\x00\t\n\v\f\r \xa0")
# And what link creation refuses after it: '%' (a name pattern: "br%d" becomes br0, any other
# '%' is EINVAL) and the sysctl directory names "all" and "default" (EINVAL). Measured: of 2,744
# random names dev_valid_name() accepts, these were all the kernel refused or renamed.


def kernel_accepts_ifname(ifname: str) -> bool:
    """Linux's dev_valid_name() on the bytes nsrun would send, with no truncation at NUL."""
    try:
        raw = ifname.encode()
    except UnicodeEncodeError:
        return False
    return (1 <= len(raw) <= 15 and raw not in (b".", b"..", b"all", b"default")
            and not (set(raw) & KERNEL_BAD_BYTES) and b"%" not in raw)


valid_names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=64).filter(
    lambda s: s[0] not in ".-"
)
hostile_names = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=NAME_CHARS + "/\\\x00\n\r\t :;*?~$`'\"é", max_size=70),
    st.sampled_from([".", "..", "../x", "./x", "x/..", "/", "//", "-", "-rf", ".hidden", "a b",
                     "a\nb", "a\x00", "a" * 65, "x/../../etc", "\u202e", "\ud800", ""]),
)


# -- check_name ------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "a", "A", "0", "_", "web", "my-ns", "my_ns", "ns.1", "a..b", "a-", "a.", "x" * 64,
    "nsrun-deadbeef", "0.0.0.0",
])
def test_check_name_accepts(name: str) -> None:
    assert names.check_name(name) == name


@pytest.mark.parametrize("name", [
    "", ".", "..", ".x", "..x", "-x", "--", "a/b", "/a", "a/", "../etc", "a b", " a", "a ",
    "a\n", "a\nb", "a\t", "a\x00", "x" * 65, "é", "naïve", "a:b", "a*", "a$", "a\\b",
    "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit(), not to the rule
])
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(UsageError) as info:
        names.check_name(name)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg
    assert "invalid namespace name" in msg
    assert repr(name)[1:-1] in msg  # the offending name is shown (escaped when unprintable)


@pytest.mark.parametrize("name", [None, 5, b"web", ["web"], 1.5])
def test_check_name_refuses_non_strings(name: object) -> None:
    with pytest.raises(UsageError):
        names.check_name(name)  # type: ignore[arg-type]


def test_name_length_limit_is_64() -> None:
    assert names.NAME_MAX == 64
    assert names.check_name("a" * 64) == "a" * 64
    with pytest.raises(UsageError):
        names.check_name("a" * 65)


@FAST
@given(hostile_names)
@example("..")
@example("a/../../b")
def test_any_string_is_accepted_only_when_safe(name: str) -> None:
    try:
        out = names.check_name(name)
    except UsageError as exc:
        assert "\n" not in str(exc) and "\r" not in str(exc)
        # Refused: then it really breaks the rule (no false refusals either).
        assert not (1 <= len(name) <= 64 and name[0] not in ".-"
                    and all(c in NAME_CHARS for c in name))
        return
    assert out == name
    # The rule, checked independently of the module's regular expression.
    assert 1 <= len(name) <= 64
    assert all(c in NAME_CHARS for c in name)
    assert name[0] not in ".-"
    # It cannot escape a directory it is joined to.
    assert "/" not in name and "\x00" not in name
    assert name not in (".", "..")
    base = "/run/netns"
    assert posixpath.dirname(posixpath.normpath(posixpath.join(base, name))) == base
    assert Path(base, name).parent == Path(base)
    assert Path(base, f"{name}.json").name == f"{name}.json"
    assert not name.startswith("-")  # never read as an option by `ip`


@FAST
@given(valid_names)
def test_every_name_of_the_rule_is_accepted(name: str) -> None:
    assert names.check_name(name) == name


# -- derived interface names -----------------------------------------------------------

@FAST
@given(valid_names)
def test_host_veth_is_a_valid_linux_ifname(name: str) -> None:
    veth = names.host_veth(name)
    assert len(veth.encode()) <= names.IFNAME_MAX == 15
    assert kernel_accepts_ifname(veth)
    assert names.ifname_problem(veth) is None
    assert names.is_host_veth(veth)
    assert re.fullmatch(r"nsr[0-9a-f]{10}", veth)
    assert names.host_veth(name) == veth  # derived, so gc can find it again
    assert veth != names.INNER_IFNAME


def test_host_veth_is_stable_across_releases() -> None:
    # gc of a run made by an older nsrun finds its veth only if the derivation never changes.
    import hashlib

    assert names.host_veth("web") == "nsr" + hashlib.blake2s(b"web", digest_size=5).hexdigest()


def test_host_veth_distinct_for_distinct_names() -> None:
    corpus: set[str] = set()
    for i in range(4000):
        corpus.update({f"ns{i}", f"web-{i}", f"{i}", f"nsrun-{i:08x}", f"a.{i}", f"x_{i}_y"})
    # Names that differ only a little: case, a trailing character, a swapped pair.
    corpus.update({"web", "Web", "WEB", "web.", "web-", "web_", "ewb", "wbe", "web0", "web1"})
    corpus.update(names.ephemeral_name() for _ in range(2000))
    veths = {names.host_veth(n) for n in corpus}
    assert len(veths) == len(corpus)


@FAST
@given(st.lists(valid_names, min_size=2, max_size=50, unique=True))
def test_host_veth_distinct_property(batch: list[str]) -> None:
    assert len({names.host_veth(n) for n in batch}) == len(batch)


# Issue 15 item 3: when another namespace's veth holds the derived name, up takes the next
# choice (in the lab: tests/lab/test_teardown_windows_and_collisions.py).
def test_host_veth_choices_start_with_the_derived_name_and_are_distinct_valid_names():
    for name in ("web", "adv82404", "adv142d6d", "x" * 64):
        choices = names.host_veth_choices(name)
        assert choices[0] == names.host_veth(name)
        assert len(set(choices)) == len(choices) == names.HOST_VETH_CHOICES
        assert all(names.is_host_veth(c) and names.ifname_problem(c) is None for c in choices)
    assert names.host_veth_choices("adv82404")[1] != names.host_veth_choices("adv142d6d")[1]


@pytest.mark.parametrize("ifname,expected", [
    ("nsr0123456789", True), ("nsr012345678a", True), ("nsr0123456789a", False),
    ("nsr012345678", False), ("nsr012345678G", False), ("nsrABCDEF0123", False),
    ("eth0", False), ("", False), ("xsr0123456789", False),
])
def test_is_host_veth(ifname: str, expected: bool) -> None:
    assert names.is_host_veth(ifname) is expected


def test_ifalias_fits_the_kernel_limit() -> None:
    alias = names.ifalias("x" * names.NAME_MAX)
    assert alias == "nsrun:" + "x" * 64
    assert len(alias.encode()) < 256  # IFALIASZ


def test_ephemeral_names() -> None:
    seen = {names.ephemeral_name() for _ in range(200)}
    # Drawn at random from 2^32: 200 draws repeat one with odds 1 in 216,000 (CI once saw
    # 199), so distinct draws are not what keeps runs apart: engine.claim_ephemeral is
    # (tests/unit/test_engine.py; support.runs.second_draw_gets_its_own shows two runs that
    # drew one name). What a draw must be is random: 10 repeats in 200 have odds far below 1e-50.
    assert len(seen) >= 190
    for name in seen:
        assert names.check_name(name) == name
        assert names.is_ephemeral(name)
        assert re.fullmatch(r"nsrun-[0-9a-f]{8}", name)


@pytest.mark.parametrize("name,expected", [
    ("nsrun-0123abcd", True), ("nsrun-0123abc", False), ("nsrun-0123abcde", False),
    ("web", False), ("nsrun-", False), ("xnsrun-0123abcd", False),
])
def test_is_ephemeral(name: str, expected: bool) -> None:
    assert names.is_ephemeral(name) is expected


# -- ifname_problem --------------------------------------------------------------------

@pytest.mark.parametrize("ifname", ["eth0", "br0", "a", "x" * 15, "br-lan", "wg.0", "é" * 7 + "x",
                                    "nsrun0", "br_0", "veth@1", "eno1"])
def test_ifname_accepted(ifname: str) -> None:
    assert names.ifname_problem(ifname) is None
    assert kernel_accepts_ifname(ifname)


@pytest.mark.parametrize("ifname,fragment", [
    ("", "empty"),
    ("x" * 16, "16 bytes long"),
    ("é" * 8, "16 bytes long"),  # 8 characters, 16 bytes: the limit is in bytes
    (".", "not a valid interface name"),
    ("..", "not a valid interface name"),
    ("br/0", "not a valid interface name"),
    ("br:0", "not a valid interface name"),
    ("br 0", "not a valid interface name"),
    ("br\t0", "not a valid interface name"),
    ("br0\n", "not a valid interface name"),
    ("br\xa00", "not a valid interface name"),  # NO-BREAK SPACE
    # Bugs fixed: NUL ends the name early in the kernel, so 'eth0\0' would act on eth0.
    ("eth0\x00", "not a valid interface name"),
    ("\x00", "not a valid interface name"),
    ("br\x1b[0m", "not a valid interface name"),
    ("br\ud800", "not a valid interface name"),  # a lone surrogate: used to raise UnicodeEncodeError
    ("brà", "not a valid interface name"),  # 'à' is C3 A0 in UTF-8: the kernel sees a space
    ("br%d", "pattern"),  # the kernel would create br0, br1...: a link nsrun never finds again
    ("x%", "pattern"),
    ("all", "reserved"),
    ("default", "reserved"),
])
def test_ifname_refused(ifname: str, fragment: str) -> None:
    problem = names.ifname_problem(ifname)
    assert problem is not None and fragment in problem
    assert "\n" not in problem


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=20),
                 st.text(alphabet="ab0/:. \t\n\x00\xa0à\ud800", max_size=17),
                 st.binary(max_size=17).map(lambda b: b.decode("latin-1"))))
@example("..")
@example("a" * 15)
@example("brà")
@example("br%d")
@example("all")
def test_ifname_problem_agrees_with_the_kernel(ifname: str) -> None:
    problem = names.ifname_problem(ifname)  # never raises
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert kernel_accepts_ifname(ifname), ifname
        assert ifname.isprintable()


def test_name_regex_is_not_fooled_by_a_trailing_newline() -> None:
    # `$` in a pattern matches before a final newline; the check must use the whole string.
    with pytest.raises(UsageError):
        names.check_name("web\n")
    assert os.sep == "/"


KERNEL_PROBE = r"""
import sys
from nsrun import names
from nsrun.linux import netlink
ipr = netlink.IPRoute()
bad = []
for ifname in sys.stdin.read().split("\0"):
    try:
        ipr.link("add", ifname=ifname, kind="bridge")
    except Exception as exc:
        bad.append(f"{ifname!r}: {exc}")
        continue
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        bad.append(f"{ifname!r}: renamed by the kernel")
# The links stay until the throwaway namespace goes, all at once (deleting each one waits
# for an RCU grace period: ~45 ms a link). The names are distinct, so none collides.
print("\n".join(bad))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="creates links in a throwaway network namespace")
def test_the_kernel_creates_every_ifname_nsrun_accepts() -> None:
    """Ask the real kernel (in a throwaway network namespace) to create bridges under names
    ifname_problem() accepts, hostile-looking ones included: none may be refused or renamed."""
    import random
    import subprocess
    import sys

    rng = random.Random(15)
    alphabet = [chr(c) for c in range(0x21, 0x7F)] + ["é", "ü", "ß", "日"]
    candidates = ["all", "default", "br%d", "a%s", "x%", "bonding_masters", "-", "--", "é" * 7 + "x"]
    candidates += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(600)]
    accepted = sorted({c for c in candidates if names.ifname_problem(c) is None})
    assert len(accepted) > 400
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", KERNEL_PROBE], input="\0".join(accepted),
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", out.stdout
