"""Issue 24, item 17: `nsrun ls` as a reader of its output meets it.

The table fits the width it is given (the terminal's, COLUMNS, or 80 columns in a pipe),
cutting processes and leaving out the least needed columns first, never a name; `--wide`
has every column whole. A reader that goes away (`nsrun ls --json | head`) ends nsrun as
it ends coreutils, by SIGPIPE, with no traceback. The rows are made up here (listing.collect
replaced); the lab half (an unmanaged namespace's prefix lengths, the same through the
service) is tests/lab/test_ls_output.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from nsrun.cli import main
from nsrun.commands import listing

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def row(name: str, procs: int = 2, command: str = "python3 -m http.server 8080 --bind 0.0.0.0", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name, "owner": "root", "owner_uid": 0, "profile": "gw1", "managed": True, "persistent": True,
        "kind": "persistent", "state": "up", "addresses": ["192.168.1.100/24"], "gateway": "192.168.1.1",
        "bridge": "br0", "rx_bytes": 123456789, "tx_bytes": 98765432, "created": 1.0, "wireguard": None,
        "processes": [{"pid": 100000 + i, "command": f"{command} {i}", "user": "root"} for i in range(procs)],
    }
    base.update(kw)
    return base


ROWS = [row("blue"), row("a-rather-long-namespace-name", procs=5), row("green", procs=0, owner="alice")]


def test_the_table_fits_80_columns_and_keeps_names_whole() -> None:
    wide = listing.table(ROWS)
    assert max(map(len, wide.splitlines())) > 200  # what `ls` printed before, whatever the width
    text = listing.table(ROWS, 80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [len(line) for line in lines]
    assert lines[0].split()[:3] == ["NAME", "OWNER", "PROFILE"]
    for r, line in zip(ROWS, lines[1:]):
        assert line.split()[:2] == [r["name"], r["owner"]]
    assert "ADDRESS" in lines[0] and "192.168.1.100/24" in lines[1]


def test_a_namespace_with_many_addresses_leaves_room_for_processes() -> None:
    """An unmanaged namespace (a router: two addresses) must not push PROCESSES out of 80
    columns: the table shows its first address and how many more; --wide all of them."""
    rows = [row("blue", procs=1, command="sleep"),
            row("lab-gw1", procs=0, kind="unmanaged", owner=None, profile=None, gateway=None, bridge=None,
                addresses=["192.168.1.1/24", "198.51.100.1/24", "203.0.113.1/24"])]
    lines = listing.table(rows, 80).splitlines()
    assert "PROCESSES" in lines[0] and "100000 sleep 0" in lines[1], lines
    assert "192.168.1.1/24 (+2)" in lines[2]
    assert "192.168.1.1/24,198.51.100.1/24,203.0.113.1/24" in listing.table(rows)


@PROPS
@given(st.integers(min_value=1, max_value=400), st.lists(st.text(min_size=1, max_size=40), min_size=0, max_size=4),
       st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), min_size=1, max_size=4, unique=True))
def test_any_width_is_kept_unless_a_name_is_longer(width: int, commands: list[str], names: list[str]) -> None:
    rows = [row(n, procs=len(commands), command=commands[i % len(commands)] if commands else "x")
            for i, n in enumerate(names)]
    lines = listing.table(rows, width).splitlines()
    assert len(lines) == len(rows) + 1
    longest = max(len("NAME"), *map(len, names))
    for line in lines:
        assert len(line) <= max(width, longest), (width, line)
    for r, line in zip(rows, lines[1:]):
        assert line.split()[0] == r["name"]


def test_wide_and_json_have_everything(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(listing, "collect", lambda: ROWS)
    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setenv("NSRUN_DAEMON", "0")
    assert main.main(["ls"]) == 0
    narrow = capsys.readouterr().out
    assert max(map(len, narrow.splitlines())) <= 60
    assert main.main(["ls", "--wide"]) == 0
    wide = capsys.readouterr().out
    assert f"{ROWS[1]['processes'][0]['command'][:30]}" in wide and "br0" in wide
    assert main.main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ROWS


def test_width_of_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "123")
    assert listing.width_of_output() == 123
    monkeypatch.delenv("COLUMNS")
    r, w = os.pipe()
    try:
        assert listing.width_of_output(w) == listing.COMPACT_WIDTH  # a pipe: compact
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("args", [("ls", "--json"), ("ls",), ("ls", "--wide")])
def test_a_reader_that_goes_away_ends_ls_by_sigpipe_quietly(tmp_path, args) -> None:
    """`nsrun ls --json | head -c1`: the pipe's reader is gone before nsrun writes (made
    certain here: the read end is closed first). nsrun dies of SIGPIPE, as coreutils do,
    and says nothing (no BrokenPipeError traceback, no "Exception ignored")."""
    code = (f"import sys; sys.argv[0] = 'nsrun'; from nsrun.commands import listing\n"
            f"rows = {ROWS!r} * 200\n"
            "listing.collect = lambda: rows\n"
            "from nsrun.cli import main\n"
            f"raise SystemExit(main.main({list(args)!r}))\n")
    r, w = os.pipe()
    os.close(r)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "NSRUN_DAEMON": "0", "NSRUN_STATE_DIR": str(tmp_path / "state")}
        p = subprocess.run([sys.executable, "-c", code], stdout=w, stderr=subprocess.PIPE, env=env, timeout=60)
    finally:
        os.close(w)
    assert p.stderr == b"" and p.returncode == -signal.SIGPIPE, (p.returncode, p.stderr.decode()[-2000:])
