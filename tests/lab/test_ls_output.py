"""Issue 24, item 17, in the lab host: `nsrun ls` shows an unmanaged namespace's addresses
with their own prefix lengths (a /32 beside a /8 on one interface is a /32), fits COLUMNS
through the service as without it, and ends by SIGPIPE when its reader goes away. The
table's layout alone: tests/unit/test_ls_output.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

import pytest

from conftest import REPO, LabRunner
from support.service import Service

HOST_KINDS = ["legacy"]


@pytest.fixture
def unmanaged(lab: LabRunner) -> Any:
    """`ip netns add` of the lab's own, with 10.9.0.1/8 and 10.9.0.2/32 on one link (a veth pair inside)."""
    name = f"plain{lab.lab.id}"
    lab.host("ip", "netns", "add", name)
    try:
        for argv in (("link", "add", "d0", "type", "veth", "peer", "name", "d1"), ("addr", "add", "10.9.0.1/8", "dev", "d0"),
                     ("addr", "add", "10.9.0.2/32", "dev", "d0"), ("addr", "add", "192.0.2.7/29", "dev", "d0"),
                     ("link", "set", "d0", "up")):
            lab.host("ip", "-n", name, *argv)
        yield name
    finally:
        lab.host("ip", "netns", "del", name)


@pytest.mark.parametrize("via", ["daemonless", "service"])
def test_unmanaged_addresses_keep_their_prefix_length(lab, tmp_path, unmanaged, via):
    svc = Service(lab, tmp_path / "daemon.log").start() if via == "service" else None
    try:
        env = {"NSRUN_DAEMON": "0"} if svc is None else {}
        rows = json.loads(lab.nsrun("ls", "--json", env=env).stdout)
        [mine] = [r for r in rows if r["name"] == unmanaged]
        assert sorted(mine["addresses"]) == ["10.9.0.1/8", "10.9.0.2/32", "192.0.2.7/29"], mine["addresses"]
        assert (mine["owner"], mine["owner_uid"], mine["kind"]) == (None, None, "unmanaged")
    finally:
        if svc is not None:
            svc.stop()


def test_through_the_service_the_table_fits_the_clients_width_and_a_closed_pipe_is_quiet(lab, tmp_path):
    svc = Service(lab, tmp_path / "daemon.log").start()
    try:
        assert lab.nsrun("up", "wide-enough-name-for-a-long-line", "-p", "nat").returncode == 0
        try:
            for columns in ("40", "80", "132"):
                r = lab.nsrun("ls", env={"COLUMNS": columns})
                assert r.returncode == 0, r.stderr
                assert all(len(line) <= int(columns) for line in r.stdout.splitlines()), (columns, r.stdout)
                assert "wide-enough-name-for-a-long-line" in r.stdout
            wide = lab.nsrun("ls", "--wide", env={"COLUMNS": "40"}).stdout
            assert "nsrun0" in wide and "10.251.0.1" in wide  # BRIDGE and GATEWAY, whole
            before = svc.status()["requests"]
            r, w = os.pipe()
            os.close(r)  # the reader has gone before nsrun writes: `nsrun ls --json | head -c0`
            try:
                p = subprocess.run(lab.nsrun_argv("ls", "--json"), env=lab.env, stdout=w, stderr=subprocess.PIPE,
                                   timeout=60, cwd=REPO)
            finally:
                os.close(w)
            assert (p.returncode, p.stderr) in ((-signal.SIGPIPE, b""), (128 + signal.SIGPIPE, b"")), p.stderr
            assert svc.status()["requests"] == before + 1  # through the service
        finally:
            assert lab.nsrun("down", "wide-enough-name-for-a-long-line").returncode == 0
        assert "Traceback" not in svc.log()
    finally:
        svc.stop()
