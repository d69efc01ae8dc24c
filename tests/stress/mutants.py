"""The project's mutation sweep (issue 27): single, realistic changes to the product, each
applied alone in a scratch copy of the checkout, and the tests that must notice it.

    python3 tests/stress/mutants.py [--list] [--only NAME[,NAME...]] [--timeout S] [--no-baseline] [--keep]

Each entry of MUTANTS is (name, file, find, replace, tests, why): FILE a glob under the
checkout that must name one file, FIND a piece of its code that must occur in it exactly
once, REPLACE what it becomes, TESTS the pytest arguments (node ids, paths, -k ...) of the
tests that must fail with it. For each entry: a fresh copy of the checkout under /tmp (the
worktree is never changed), the change made there, and the tests run there (their code
through PYTHONPATH, as the suite runs the checkout's) with `-x -q -p no:cacheprovider` and a
timeout. It prints, per entry:

    KILLED    the tests failed (the first failure shown)
    SURVIVED  they passed: the change went unnoticed (a blind spot: add a test)
    ERROR     FIND is not in FILE exactly once, the glob names no file or several, the
              change does not compile, or pytest could not run the tests (usage error, no
              test collected, collection error): the entry drifted from the code, fix it
    TIMEOUT   the tests ran out of time (interrupted, then killed): not counted as killed

then the kill rate (KILLED over the entries run). Before the entries, a baseline: all the
selected entries' tests once on the unchanged copy; they must pass, else a failure would be
counted as a kill (--no-baseline skips it). Exit 0 when every entry run was KILLED.

Run as root (most tests build labs of namespaces), with the venv's Python:
`/opt/nsrun/bin/python tests/stress/mutants.py`. It takes a few minutes (each entry's tests
stop at their first failure); it is not run by CI. Add an entry for every new capability as it lands; the last figures are in
docs/development.md ("Mutation sweep").
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent.parent


class Mutant(NamedTuple):
    name: str
    file: str  # a glob under the checkout naming one file
    find: str  # occurs in it exactly once
    replace: str
    tests: tuple[str, ...]  # pytest arguments: the tests that must fail
    why: str


# fmt: off
MUTANTS: list[Mutant] = [
    # -- the audit of issue 27: its six blind spots ------------------------------------------
    Mutant("userpath-down-unchecked", "nsrun/service/userpath.py",
           '    _check(caller, "down", pol.may_remove(who, name, _owner_uid(name)))\n', "",
           ("tests/lab/test_service_non_root_callers.py::test_user_named_namespace_own_by_default",),
           "a caller without root takes down root's namespace"),
    Mutant("userpath-down-asks-enter", "nsrun/service/userpath.py",
           '_check(caller, "down", pol.may_remove(who, name, _owner_uid(', '_check(caller, "down", pol.may_enter(who, name, _owner_uid(',
           ("tests/lab/test_service_non_root_callers.py::test_user_named_namespace_own_by_default",),
           "down granted by the policy's enter patterns"),
    Mutant("service-wiring-key-renamed", "nsrun/process/hostresolver.py",
           '"host_resolver": rec.host_resolver}', '"keep_resolver": rec.host_resolver}',
           ("tests/lab/test_dns.py::test_lookups_reach_neither_nscd_nor_resolved_but_the_profiles_server[legacy-service]",),
           "runs through the service no longer hide nscd/resolved"),
    Mutant("become-keeps-root-groups", "nsrun/process/execution.py",
           "    os.setgroups(list(ident.groups))\n", "",
           ("tests/lab/test_run.py::test_runs_as_sudo_caller_without_capabilities[legacy]",
            "tests/lab/test_service.py::test_run_as_sudo_caller_and_user_option"),
           "CMD keeps root's supplementary groups"),
    Mutant("forwarding-restored-under-a-live-bridge", "nsrun/engine/resources/masquerade.py",
           "if saved is None or _nat_bridges(leaving):", "if saved is None:",
           ("tests/lab/test_teardown_windows_and_collisions.py::test_ip_forward_stays_on_while_another_nat_bridge_serves",),
           "ip_forward put back while another nat bridge serves namespaces"),
    Mutant("endpoint-error-unredacted", "nsrun/wgconf.py",
           'raise ProfileError(source, got[1], f"{_shown(got[0])} {exc}")',
           'raise ProfileError(source, got[1], f"{got[0]} {exc}")',
           ("tests/unit/test_wgconf.py",),
           "an Endpoint error echoes its value"),
    # -- the rest of the audit ------------------------------------------------------------
    Mutant("bridge-lock-not-taken", "nsrun/engine/resources/bridge.py",
           "    s.held.enter_context(allocator.FileStore(prof.bridge).lock())\n", "",
           ("tests/lab/test_teardown_windows_and_collisions.py::test_a_setup_on_a_bridge_waits_for_the_bridges_lock",),
           "a setup on its way to a lease, unseen by the last teardown, which takes the bridge away"),
    Mutant("gc-judges-a-live-owner-dead", "nsrun/state.py",
           "return now is not None and now == start", "return now is not None and now is start",
           ("tests/lab/test_crash_safety.py::test_gc_leaves_live_runs_and_persistent_namespaces_alone[legacy]",),
           "`is` for `==`: start times are big ints, a live run's owner looks dead"),
    Mutant("gc-ignores-dns-orphans", "nsrun/engine/resources/dns.py",
           "for ent in entries if ent not in scan.records and _left(ent)]",
           "for ent in entries if ent in scan.records and _left(ent)]",
           ("tests/lab/test_teardown_windows_and_collisions.py::test_gc_removes_only_dns_files_with_its_own_state_directorys_mark",),
           "an orphan resolv.conf stays"),
    Mutant("masquerade-rule-left", "nsrun/engine/resources/masquerade.py",
           "        for name in [net.firewall] if net.firewall else FIREWALLS:\n"
           "            firewall.backend(name).remove(bridge)\n",
           "        pass\n",
           ("tests/lab/test_run.py::test_bridge_and_rules_exist_while_running_and_go_after[legacy]",),
           "the MASQUERADE rule stays after the last namespace"),
    Mutant("foreign-opening-left", "nsrun/engine/resources/masquerade.py",
           "    if net.firewall is not None:\n        foreign.close(bridge)\n", "",
           ("tests/lab/test_run.py::test_nat_run_reaches_upstream_through_host_nat[nftables]",),
           "the opening in the host's drop-policy chain stays"),
    Mutant("varlink-socket-not-hidden", "nsrun/process/hostresolver.py",
           '"/run/nscd/socket", "/run/systemd/resolve/io.systemd.Resolve")', '"/run/nscd/socket")',
           ("tests/lab/test_dns.py::test_lookups_reach_neither_nscd_nor_resolved_but_the_profiles_server[legacy-daemonless]",),
           "nss-resolve reaches the host's resolved"),
    Mutant("claim-takes-a-foreign-name", "nsrun/engine/__init__.py",
           "if not taken and not netns.exists(name):", "if not taken:",
           ("tests/unit/test_engine.py",),
           "an ephemeral run takes a namespace that is not its own"),
    Mutant("terminal-sigint-forwarded-twice", "nsrun/process/supervise.py",
           "return detached and signo in TERMINAL", "return signo in TERMINAL",
           ("tests/lab/test_signals.py::test_one_ctrl_c_gives_cmd_one_sigint",),
           "Ctrl-C reaches CMD twice (the terminal's and the supervisor's)"),
    Mutant("policy-remove-by-enter", "nsrun/service/policy.py",
           'r.enter if what == "enter" else r.remove', "r.enter",
           ("tests/unit/test_policy.py",),
           "remove granted by enter patterns"),
    Mutant("policy-unknown-owner-is-caller", "nsrun/service/policy.py",
           "if owner_uid is not None and owner_uid == caller.uid:", "if owner_uid is None or owner_uid == caller.uid:",
           ("tests/unit/test_policy.py",),
           "a namespace of unknown owner counted as the caller's"),
    Mutant("subnet-host-bits-accepted", "nsrun/profile.py",
           "subnet = ipaddress.IPv4Network(raw.strip(), strict=True)",
           "subnet = ipaddress.IPv4Network(raw.strip(), strict=False)",
           ("tests/unit/test_profile.py",),
           "10.0.0.1/24 taken for a subnet"),
    Mutant("ip-forward-not-put-back", "nsrun/engine/resources/masquerade.py",
           '            sysctl.write("net.ipv4.ip_forward", value)\n', "            pass\n",
           ("tests/lab/test_run.py::test_nat_run_reaches_upstream_through_host_nat[legacy]",),
           "ip_forward left on after the last nat bridge"),
    Mutant("wire-size-cap-removed", "nsrun/wire.py",
           "        if size > MAX_FRAME:\n", "        if False:\n",
           ("tests/unit/test_wire.py",),
           "an untrusted client announces a frame of any size"),
    Mutant("wire-descriptor-cap-removed", "nsrun/wire.py",
           'if len(fds) > ALLOWED_FDS.get(msg["type"], 0):', "if len(fds) > MAX_FDS:",
           ("tests/unit/test_wire.py",),
           "descriptors on messages that carry none"),
    Mutant("lease-overwritten", "nsrun/engine/allocator.py",
           "os.link(tmp, self._path(addr))", "os.replace(tmp, self._path(addr))",
           ("tests/unit/test_allocator.py",),
           "a taken address leased again"),
    Mutant("gc-removes-a-live-foreign-veth", "nsrun/engine/resources/veth.py",
           "ifname in names.host_veth_choices(owner) and not netns.exists(owner):",
           "ifname in names.host_veth_choices(owner):",
           ("tests/lab/test_crash_safety.py::test_gc_of_another_state_dir_leaves_this_ones_live_pieces_alone[legacy]",),
           "gc of one state directory takes another's live veth"),
    # -- issue 27's own fixes and tests ---------------------------------------------------
    Mutant("redaction-splits-on-spaces-and-commas", "nsrun/wgconf.py",
           '    if _KEY_LIKE.search(text):\n        return "(a value that looks like a key)"\n',
           '    for word in text.replace(",", " ").split():\n'
           '        try:\n'
           '            Key.from_base64(word)\n'
           '            return "(a value that looks like a key)"\n'
           '        except ValueError:\n'
           '            pass\n',
           ("tests/unit/test_wgconf.py",),
           "the redaction before issue 27: Endpoint = KEY:0 printed the key"),
    Mutant("unknown-key-name-echoed", "nsrun/wgconf.py",
           'raise ProfileError(source, f"line {entries[0][0]}: {_shown(key)}", why)',
           'raise ProfileError(source, f"line {entries[0][0]}: {key}", why)',
           ("tests/unit/test_wgconf.py",),
           "a key pasted as a line of its own is echoed as an unknown key's name"),
    Mutant("spawn-resolver-not-hidden", "nsrun/process/spawn.py",
           "lambda: hostresolver.hide(ns_name, rec)", "lambda: None",
           ("tests/lab/test_spawn.py::test_like_nsrun_exec_in_a_wired_namespace",),
           "a caller without root reaches the host's nscd/resolved (the spawn test once could not fail)"),
    Mutant("filestore-drifts-from-the-protocol", "nsrun/engine/allocator.py",
           "    def last_reserved(self) -> int | None:\n        try:",
           "    def last_reserved(self) -> int:\n        try:",
           ("tests/unit/test_allocator.py::test_both_stores_implement_the_store_protocol",),
           "a store's method no longer the protocol's (`assert allocator.Store` could not fail)"),
    Mutant("gc-dns-orphan-step-gone", "nsrun/engine/resources/dns.py",
           '        fault.checkpoint("dns-orphan")', "        pass",
           ("tests/lab/test_teardown_windows_and_collisions.py::test_gc_killed_in_its_removal_of_a_dns_orphan_then_gc_leaks_nothing",),
           "gc's DNS-orphan path out of the fault harness's reach"),
    # the harness's own promise (issue 27): under CI a missing tool fails, and skips are listed
    Mutant("ci-skips-a-missing-tool", "tests/support/requirements.py",
           "    if under_ci():\n        pytest.fail(", "    if False:\n        pytest.fail(",
           ("tests/unit/test_requirements.py",),
           "a missing tool skips silently under CI"),
    Mutant("ci-without-the-skip-summary", "tests/conftest.py",
           "    if under_ci():\n        _report_skips(config)\n", "",
           ("tests/unit/test_requirements.py",),
           "CI's summary does not list the skips"),
    # -- issue 21 (reach): IPv6, isolate, allow --------------------------------------------
    Mutant("isolation-port-flag-not-set", "nsrun/engine/resources/guard.py",
           '        s.ipr.brport("set", index=idx, isolated=1)\n', "        pass\n",
           ("tests/lab/test_isolation.py::test_two_isolated_namespaces_reach_neither_each_other_nor_the_host_but_the_upstream[legacy]",),
           "isolation not applied: no bridge port isolation on the veth"),
    Mutant("isolation-guard-not-made", "nsrun/engine/resources/guard.py",
           "    guard.make(guard.Spec(", "    (lambda _: None)(guard.Spec(",
           ("tests/lab/test_isolation.py::test_two_isolated_namespaces_reach_neither_each_other_nor_the_host_but_the_upstream[legacy]",),
           "isolation not applied: no guard tables (the host's services reachable)"),
    Mutant("isolation-not-marked", "nsrun/engine/firewall/guardtables.py",
           "    if spec.isolate:  # first: every frame of this port is marked, whatever else passes\n",
           "    if False:\n",
           ("tests/lab/test_isolation.py::test_an_isolated_namespace_reaches_no_other_namespace_on_any_bridge[legacy]",),
           "an isolated namespace reaches a sibling that is not isolated, or another bridge's namespace"),
    Mutant("allow-lets-everything-through", "nsrun/engine/firewall/guardtables.py",
           "        rules += _listed(spec, 4) + _listed(spec, 6)\n        rules.append([DROP])\n    return rules\n\n\ndef batch",
           "        rules += _listed(spec, 4) + _listed(spec, 6)\n    return rules\n\n\ndef batch",
           ("tests/lab/test_isolation.py::test_allow_reaches_the_listed_destination_and_nothing_else[legacy]",),
           "an allow-list that lets everything through"),
    Mutant("allow-source-not-pinned", "nsrun/engine/firewall/guardtables.py",
           '    rules.append([_m(_p("ip", "saddr"), spec.address, "!="), DROP])\n', "",
           ("tests/lab/test_isolation.py::test_not_even_one_way_udp_leaves_for_an_unlisted_destination[legacy]",),
           "root inside takes another address and leaves by it, unlisted"),
    Mutant("allow-stateless-part-missing-in-bridge-mode", "nsrun/engine/firewall/guardtables.py",
           '            if spec.mode == "bridge":\n                rules.append([_m(_meta("protocol"), fam), DROP])\n',
           '            if spec.mode == "bridge":\n                pass\n',
           ("tests/lab/test_isolation.py::test_allow_in_bridge_mode[legacy-0]",),
           "in bridge mode frames to the LAN's router pass the allow-list"),
    Mutant("v6-forwarding-not-put-back", "nsrun/engine/resources/masquerade.py",
           '        sysctl.write(ALL_FORWARDING6, saved["forwarding"])\n', "        pass\n",
           ("tests/lab/test_ipv6.py::test_nat66_and_forwarding_while_running_and_put_back_after[legacy]",),
           "IPv6 forwarding left on after the last nat bridge with subnet6"),
    Mutant("accept-ra-not-kept-while-forwarding", "nsrun/engine/resources/masquerade.py",
           '                sysctl.write(f"net/ipv6/conf/{ifname}/accept_ra", "2")\n', "                pass\n",
           ("tests/lab/test_ipv6.py::test_nat66_and_forwarding_while_running_and_put_back_after[legacy]",),
           "the host's SLAAC default route dropped when IPv6 forwarding goes on"),
    Mutant("ra-accepted-inside", "nsrun/engine/resources/veth.py",
           'settings = {f"net/ipv6/conf/{eth}/accept_ra": "0"', 'settings = {f"net/ipv6/conf/{eth}/accept_ra": "1"',
           ("tests/lab/test_ipv6.py::test_no_router_advertisement_is_accepted_inside[legacy]",),
           "a router on the LAN routes around the profile's gateway6"),
    Mutant("dad-skipped", "nsrun/linux/ndp.py",
           "    if probe_ms <= 0:\n        add(ipr, idx, addr, prefixlen)\n",
           "    if True:\n        add(ipr, idx, addr, prefixlen)\n",
           ("tests/lab/test_ipv6.py::test_dad_skips_an_address_taken_on_the_lan[legacy]",),
           "an IPv6 address taken on the LAN is handed out"),
    Mutant("nat66-not-made", "nsrun/engine/resources/masquerade.py",
           "            firewall.backend(name).ensure_nat6(prof.bridge, net.subnet6, prof.name)\n", "",
           ("tests/lab/test_ipv6.py::test_nat_subnet6_reaches_the_v6_server_through_the_host[legacy]",),
           "no NAT66: a ULA namespace gets nowhere"),
    Mutant("v6-lease-kept", "nsrun/engine/resources/lease.py",
           "            store6.release(int(ipaddress.IPv6Address(rec.address6)), rec.name)\n", "            pass\n",
           ("tests/lab/test_ipv6.py::test_nat_subnet6_reaches_the_v6_server_through_the_host[legacy]",),
           "an IPv6 lease outlives its namespace"),
    Mutant("guard-tables-left", "nsrun/engine/resources/guard.py",
           "        guard.remove(rec.name, linger=True)\n        _withdrawn.add(rec.name)", "        _withdrawn.add(rec.name)",
           ("tests/lab/test_isolation.py::test_allow_reaches_the_listed_destination_and_nothing_else[legacy]",),
           "a namespace's guard tables stay after it"),
    Mutant("guard-removed-while-the-veth-lives", "nsrun/engine/resources/guard.py",
           "        veth.shut(rec)\n        guard.remove(rec.name, linger=True)\n        _withdrawn",
           "        guard.remove(rec.name, linger=True)\n        _withdrawn",
           ("tests/lab/test_isolation.py::test_what_the_namespace_queued_at_its_end_does_not_leave_unguarded[legacy]",),
           "what the namespace queued behind an unresolved neighbour leaves once its guard is gone, before its veth"),
    Mutant("guard-orphans-unseen", "nsrun/engine/resources/guard.py",
           "if name not in scan.records and record.name_gone(name)]", "if False]",
           ("tests/lab/test_isolation.py::test_gc_removes_guard_tables_whose_namespace_and_record_are_gone[legacy]",),
           "gc does not find a crashed setup's guard tables"),
    # -- issue 21: published ports and the late firewall ---------------------------------------
    Mutant("publish-rules-left", "nsrun/engine/firewall/nftables.py",
           "present = publish_table(name) in _tables(PUBLISH_PREFIX)", "present = False",
           ("tests/lab/test_publish.py::test_a_published_port_is_reached_from_the_lan_the_host_and_a_sibling[nftables]",),
           "a namespace's published ports' rules stay after it"),
    Mutant("publish-withdrawn-left", "nsrun/engine/resources/publish.py",
           "        _remove_nftables(rec, linger=True)\n        _withdrawn.add(rec.name)", "        _withdrawn.add(rec.name)",
           ("tests/lab/test_publish.py::test_a_published_port_is_reached_from_the_lan_the_host_and_a_sibling[nftables]",),
           "a teardown marks the published ports' rules withdrawn without removing them: they stay"),
    Mutant("publish-conflict-unchecked", "nsrun/engine/resources/publish.py",
           "                        if _holds(owner):", "                        if False:",
           ("tests/unit/test_ports.py::test_claims_one_namespace_per_port",
            "tests/lab/test_publish.py::test_a_published_port_is_reached_from_the_lan_the_host_and_a_sibling[legacy]"),
           "a host port another namespace publishes is taken from it, not refused"),
    Mutant("publish-opening-missing", "nsrun/engine/firewall/foreign.py",
           "        accepts = _publish_accepts(b, bridge, forwards, veth)", "        accepts = []",
           ("tests/lab/test_publish.py::test_a_published_port_is_reached_from_the_lan_the_host_and_a_sibling[docker]",),
           "Docker's FORWARD DROP drops the way in to a published port"),
    Mutant("publish-localnet-unguarded", "nsrun/engine/resources/publish.py",
           "        firewall.backend(net.firewall).ensure_localnet_guard(bridge, s.prof.name)\n", "",
           ("tests/lab/test_publish.py::test_up_publishes_and_a_published_namespace_keeps_the_hosts_loopback_closed[legacy]",),
           "route_localnet opens the host's loopback to the bridge"),
    Mutant("publish-hairpin-unmasqueraded", "nsrun/engine/firewall/forwards.py",
           "sources = (subnet, LOOPBACK) if p.loopback else (subnet,)",
           "sources = (LOOPBACK,) if p.loopback else ()",
           ("tests/lab/test_publish.py::test_a_published_port_is_reached_from_the_lan_the_host_and_a_sibling[nftables]",),
           "a sibling on the bridge cannot reach a published port (hairpin)"),
    Mutant("publish-grants-everyone", "nsrun/service/policy.py",
           "        if caller.uid == 0 or not host_ports:", "        if True:",
           ("tests/unit/test_ports.py::test_the_policys_publish",),
           "a caller without root publishes any port, whatever the policy"),
    Mutant("publish-not-repeatable", "nsrun/cli/grammar.py",
           'if opt.field in given and opt.kind != "list":', "if opt.field in given:",
           ("tests/unit/test_grammar.py",),
           "-P given twice is refused"),
    Mutant("late-firewall-not-looked-at", "nsrun/engine/resources/opening.py",
           "s.data[LATE] = foreign.unopened(bridge, _mode(s), backend, skip=skip(s), stub=stub, rs=rs,\n"
           "                                            v6=_v6(s, net))",
           "s.data[LATE] = []",
           ("tests/lab/test_host_firewalls.py::test_a_drop_chain_that_appears_while_a_bridge_is_in_use[nftables]",),
           "a drop chain that appears while a bridge is in use cuts its next runs off"),
    Mutant("doctor-silent-on-a-late-chain", "nsrun/commands/doctor.py",
           "    late = _unopened(prof.bridge, mode, backend, skip, stub, v6)", "    late: set[tuple[str, str, str, str]] = set()",
           ("tests/lab/test_host_firewalls.py::test_a_drop_chain_that_appears_while_a_bridge_is_in_use[nftables]",),
           "doctor says all is well while a late chain cuts a bridge off"),
    Mutant("publish-v6-legacy-rules-missing", "nsrun/engine/firewall/iptables.py",
           '        _v6("publish", bridge, tag, json.dumps([f._asdict() for f in six]))\n', "        pass\n",
           ("tests/lab/test_ipv6.py::test_a_published_port_answers_over_v6_from_the_lan[legacy]",),
           "a published port does not answer over IPv6 on the legacy backend"),
    Mutant("publish-v6-opening-missing", "nsrun/engine/firewall/foreign.py",
           'v6=any(f.family == "ip6" for f in forwards)', "v6=False",
           ("tests/lab/test_ipv6.py::test_a_published_port_answers_over_v6_from_the_lan[ufw]",),
           "ufw's ip6 chains drop the way in to a port published over IPv6"),
    Mutant("xtables-final-drop-missed", "nsrun/linux/xtables.py",
           'drops = matches_all and (name == "REJECT" or (name == "" and verdict == -1))', "drops = False",
           ("tests/lab/test_legacy_reader.py",),
           "a legacy chain whose last rule drops everything reads as open"),
]
# fmt: on


class Outcome(NamedTuple):
    verdict: str  # KILLED, SURVIVED, ERROR, TIMEOUT
    detail: str
    seconds: float


def scratch_copy() -> Path:
    """The checkout, copied under /tmp (sources only: no .git, no caches)."""
    top = Path(tempfile.mkdtemp(prefix="nsrun-mutant-", dir="/tmp"))
    os.chmod(top, 0o755)
    tree = top / "nsrun-checkout"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".hypothesis", "*.pyc"))
    return tree


def mutate(tree: Path, m: Mutant) -> str | None:
    """Apply M in TREE; why it cannot be applied, or None."""
    found = sorted(glob.glob(str(tree / m.file), recursive=True))
    if len(found) != 1:
        return f"{m.file} names {len(found)} files"
    path = Path(found[0])
    text = path.read_text()
    count = text.count(m.find)
    if count != 1:
        return f"the code pattern occurs {count} times in {m.file}"
    changed = text.replace(m.find, m.replace)
    try:
        compile(changed, str(path), "exec")
    except SyntaxError as exc:
        return f"the change does not compile: {exc}"
    path.write_text(changed)
    return None


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    """pytest TESTS in TREE: (exit status, None on timeout; its output)."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        # SIGINT first: pytest's teardown takes its labs down; then the whole group.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return None, out


def first_failure(out: str) -> str:
    """The first failing test and the first line of what pytest said against it."""
    lines = out.splitlines()
    failed = next((line.split(" - ")[0] for line in lines if line.startswith(("FAILED ", "ERROR "))), "")
    # the test's own failure first (pytest prints the teardown errors' section before it)
    at = next((i for i, line in enumerate(lines) if line.startswith("=") and " FAILURES " in line), 0)
    said = next((line[1:].strip() for line in lines[at:] + lines[:at] if line.startswith("E ")), "")
    if failed or said:
        return f"{failed} | {said[:160]}" if said else failed
    rest = [line for line in lines if line.strip()]
    return rest[-1][:200] if rest else ""


def judge(status: int | None, out: str) -> tuple[str, str]:
    if status is None:
        return "TIMEOUT", first_failure(out)
    if status == 0:
        return "SURVIVED", first_failure(out)
    if status == 1:
        return "KILLED", first_failure(out)
    # 2: interrupted (a collection error), 3: internal error, 4: usage error, 5: no tests
    return "ERROR", f"pytest exit status {status}: {first_failure(out)}"


def run_one(m: Mutant, timeout: float, keep: bool) -> Outcome:
    t0 = time.monotonic()
    tree = scratch_copy()
    try:
        problem = mutate(tree, m)
        if problem:
            return Outcome("ERROR", problem, time.monotonic() - t0)
        status, out = run_tests(tree, m.tests, timeout)
        verdict, detail = judge(status, out)
        return Outcome(verdict, detail, time.monotonic() - t0)
    finally:
        if keep:
            print(f"  (kept {tree})", flush=True)
        else:
            shutil.rmtree(tree.parent, ignore_errors=True)


def baseline(chosen: list[Mutant], timeout: float) -> bool:
    """Every chosen entry's tests pass on the unchanged code (else a failure is no kill)."""
    tests: list[str] = []
    for m in chosen:
        tests += [t for t in m.tests if t not in tests]
    tree = scratch_copy()
    try:
        t0 = time.monotonic()
        status, out = run_tests(tree, tuple(tests), timeout * 4)
        ok = status == 0
        print(f"{'baseline':<10}{'passed' if ok else 'FAILED'} ({time.monotonic() - t0:.0f} s, "
              f"{len(tests)} test selections)", flush=True)
        if not ok:
            print(out[-3000:], flush=True)
        return ok
    finally:
        shutil.rmtree(tree.parent, ignore_errors=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the entries and exit")
    ap.add_argument("--only", default="", help="comma-separated entry names")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per entry's tests")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run on the unchanged code")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = ap.parse_args(argv)
    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names), "entry names must be unique"
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:<42} {m.file:<40} {m.why}")
        return 0
    only = [n for n in args.only.split(",") if n]
    unknown = [n for n in only if n not in names]
    if unknown:
        ap.error(f"no such entries: {', '.join(unknown)}")
    chosen = [m for m in MUTANTS if not only or m.name in only]
    if os.geteuid() != 0:
        print("mutants: run as root (the lab tests need it)", file=sys.stderr)
        return 2
    print(f"nsrun mutation sweep, {datetime.date.today()}, {len(chosen)} entries", flush=True)
    if not args.no_baseline and not baseline(chosen, args.timeout):
        print("mutants: the tests fail on the unchanged code: no verdict", file=sys.stderr)
        return 2
    tally: dict[str, int] = {}
    for m in chosen:
        out = run_one(m, args.timeout, args.keep)
        tally[out.verdict] = tally.get(out.verdict, 0) + 1
        print(f"{out.verdict:<10}{m.name:<42}{out.seconds:6.0f} s  {out.detail}", flush=True)
    killed = tally.get("KILLED", 0)
    print(f"kill rate: {killed}/{len(chosen)} ({100 * killed / max(len(chosen), 1):.0f}%) "
          + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())), flush=True)
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
