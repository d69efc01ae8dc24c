"""Issue 27: a missing tool or kernel feature skips a test, except under CI, where it fails
naming it (tests/support/requirements.py); CI installs every tool the suite requires and
prints the skip summary; no test skips for a missing tool any other way."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO
from support import requirements
from support.requirements import requires

ABSENT = "nsrun-test-no-such-tool"


def outcome(*what: str) -> BaseException | None:
    """What requires(WHAT) raised (pytest's skip or fail), caught here: a skip let through
    would skip this test instead of failing it."""
    try:
        requires(*what)
    except BaseException as exc:  # pytest's outcomes are BaseExceptions
        return exc
    return None


@pytest.mark.parametrize("ci", ["", "0", "false"])
def test_a_missing_tool_skips_outside_ci(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    got = outcome("sh", ABSENT)
    assert isinstance(got, pytest.skip.Exception) and ABSENT in str(got), repr(got)


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_a_missing_tool_or_feature_fails_under_ci_naming_it(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    monkeypatch.setitem(requirements.FEATURES, "warp drive", lambda: "no warp drive in this kernel")
    for what, said in ((ABSENT, f"required under CI: {ABSENT} is not installed"),
                       ("warp drive", "no warp drive in this kernel"),
                       ("/nonexistent/python3", "/nonexistent/python3 is missing")):
        got = outcome("sh", what)
        assert isinstance(got, pytest.fail.Exception) and said in str(got), repr(got)
    assert outcome("sh", "/bin/sh") is None  # present: nothing happens


def _ci_tools() -> set[str]:
    text = (REPO / ".ci" / "run").read_text()
    loop = re.search(r"for tool in (.*?); do", text, re.S)
    assert loop, "the tool list of .ci/run"
    return {word.split(":")[0] for word in loop.group(1).replace("\\", " ").split()}


def test_ci_sets_ci_and_installs_every_tool_the_suite_requires():
    text = (REPO / ".ci" / "run").read_text()
    assert "\nexport CI=true\n" in text
    assert _ci_tools() == {t for t in requirements.PACKAGES if not t.startswith("/")}


# Every other skip in the suite, by kind: root (the unit tier runs without it), a host kind a
# test does not apply to, and the kernel limits CI may share (support.requirements says why).
# A skip for a missing tool or kernel feature goes through requires(), so CI fails on it.
_SKIP = re.compile(r"(skipif\(|pytest\.skip\(|importorskip\()(.*)")
_ALLOWED = re.compile(r"IS_ROOT|geteuid|needs root|lab host|^\"firewalld: |this kernel has no |"
                      r"TIOCSTI is disabled on this kernel")


def test_every_skip_is_for_root_a_host_kind_or_a_kernel_limit():
    found = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path.name in ("requirements.py", "test_requirements.py") or "stress" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for match in _SKIP.finditer(line):
                if not _ALLOWED.search(match.group(2)):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "skip for a missing tool or feature through support.requirements.requires:\n" + \
        "\n".join(found)


def test_ci_prints_the_skip_summary(tmp_path):
    """Under CI, pytest's summary lists the skips with their reasons (-rs, set by conftest):
    a test module outside the suite, run with the suite's conftest as a plugin."""
    test = tmp_path / "test_one_skip.py"
    test.write_text("import pytest\n\ndef test_skipped():\n    pytest.skip('a reason to read')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "CI")}
    env.update(PYTHONPATH=f"{REPO}:{REPO / 'tests'}", NSRUN_TEST_SHARED_MOUNTS="1")  # no session mounts
    for ci, shown in (("true", True), ("", False)):
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                            "--rootdir", str(tmp_path), str(test)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, env={**env, "CI": ci})
        assert r.returncode == 0, r.stdout + r.stderr
        assert ("SKIPPED [1]" in r.stdout and "a reason to read" in r.stdout) == shown, r.stdout
