"""nsrun.linux.xtables (issue 21): a legacy chain's policy and last rule read by getsockopt,
as every setup now reads them (the late firewall's look), held against python-iptables'
reading of the same chains, on the real kernel, in a throwaway network namespace."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

CASES = [
    ("empty", []),
    ("policy drop", ["-P FORWARD DROP"]),
    ("final drop", ["-A FORWARD -j DROP"]),
    ("final reject", ["-A FORWARD -j REJECT"]),
    ("drop, then an accept", ["-A FORWARD -j DROP", "-A FORWARD -s 192.0.2.1 -j ACCEPT"]),
    ("a drop on one interface", ["-A FORWARD -i eth0 -j DROP"]),
    ("a drop from one source", ["-A FORWARD -s 192.0.2.0/24 -j DROP"]),
    ("a drop with a match", ["-A FORWARD -m comment --comment x -j DROP"]),
    ("a jump", ["-N X", "-A X -j DROP", "-A FORWARD -j X"]),
    ("input, as ufw's", ["-P INPUT DROP", "-A INPUT -i lo -j ACCEPT", "-A INPUT -m conntrack --ctstate "
                         "ESTABLISHED -j ACCEPT"]),
    ("input final drop", ["-A INPUT -j DROP", "-P FORWARD DROP", "-A FORWARD -o eth9 -j ACCEPT"]),
]

SCRIPT = r"""
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from nsrun.linux import xtables
from nsrun.linux.iptc import load

def by_iptc(name):
    iptc = load()
    table = iptc.Table("filter")
    table.refresh()
    chain = iptc.Chain(table, name)
    rules = chain.rules
    last = bool(rules and rules[-1].target.name in ("DROP", "REJECT") and not rules[-1].matches
                and not rules[-1].in_interface and not rules[-1].out_interface
                and rules[-1].src in ("0.0.0.0/0.0.0.0", None) and rules[-1].dst in ("0.0.0.0/0.0.0.0", None))
    return [chain.get_policy().name, last]

out = {}
for label, commands in json.loads(sys.argv[2]):
    subprocess.run(["iptables-legacy", "-F"], check=True)
    subprocess.run(["iptables-legacy", "-X"], check=True)
    for c in ("INPUT", "FORWARD"):
        subprocess.run(["iptables-legacy", "-P", c, "ACCEPT"], check=True)
    for command in commands:
        subprocess.run(["iptables-legacy", *command.split()], check=True)
    out[label] = {c: [list(xtables.builtin_chain("filter", c)), by_iptc(c)] for c in ("FORWARD", "INPUT")}
print(json.dumps(out))
"""


def test_the_getsockopt_reading_agrees_with_python_iptables():
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", SCRIPT, str(REPO), json.dumps(CASES)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    for label, _ in CASES:
        for chain, (ours, theirs) in found[label].items():
            assert ours == theirs, (label, chain, ours, theirs)
    assert found["policy drop"]["FORWARD"][0] == ["DROP", False]
    assert found["final drop"]["FORWARD"][0] == ["ACCEPT", True]
    assert found["final reject"]["FORWARD"][0] == ["ACCEPT", True]
    assert found["input final drop"]["INPUT"][0] == ["ACCEPT", True]
    assert found["a drop on one interface"]["FORWARD"][0] == ["ACCEPT", False]
