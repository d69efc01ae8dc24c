"""`nsrun-cni`: the CNI plugin's main. A runtime runs it once per container and verb, so its
start is lean: VERSION imports nothing of the engine, DEL no profile, and the engine's
modules load as each verb needs them.

Reads CNI_COMMAND (ADD, DEL, CHECK, GC, STATUS, VERSION), the other CNI_* variables and the
network configuration on stdin (nsrun.cni.netconf), calls the engine (nsrun.engine.attachment)
and prints the Result, or an error object (`cniVersion`, `code`, `msg`, `details`) with exit
status 1. Every exception ends as an error object, never a traceback (NSRUN_DEBUG=1 adds one
on stderr); a refusal is found before anything changes. Exit 0 prints a Result for ADD and
VERSION, nothing for DEL, CHECK, GC and STATUS.
"""

from __future__ import annotations

import json
import os
import sys
TYPE_CHECKING = False  # typing costs ~5 ms to import: for mypy only

from nsrun.cni import netconf
from nsrun.cni.netconf import CniError

if TYPE_CHECKING:
    from typing import Any

    from nsrun.cni.netconf import Request


def _read_stdin() -> bytes:
    try:
        data = sys.stdin.buffer.read(netconf.MAX_CONFIG + 1)
    except (OSError, ValueError) as exc:
        raise CniError(netconf.IO_FAILURE, "reading the network configuration failed", str(exc)) from None
    if len(data) > netconf.MAX_CONFIG:
        raise CniError(netconf.DECODING_FAILURE, "the network configuration is too large",
                       f"more than {netconf.MAX_CONFIG} bytes on stdin")
    return data


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _environment(req: Request) -> None:
    """Root, and the state directory and profile path the configuration names (over the
    runtime's environment): the engine finds them where nsrun's commands do."""
    if os.geteuid() != 0:
        raise CniError(netconf.NSRUN_FAILED, "nsrun's CNI plugin must run as root",
                       f"it runs as uid {os.geteuid()}")
    if req.state_dir:
        os.environ["NSRUN_STATE_DIR"] = req.state_dir
    if req.profile_path:
        os.environ["NSRUN_PROFILE_PATH"] = req.profile_path


def _state() -> None:
    """The state directory, checked (and made, mode 0700, when missing): the last check
    before the engine changes anything."""
    from nsrun import state
    from nsrun.errors import UsageError

    try:
        state.check_root()
    except UsageError as exc:
        raise CniError(netconf.INVALID_ENVIRONMENT, "unusable state directory (NSRUN_STATE_DIR)", str(exc)) from None


def _profile(req: Request) -> Any:
    from nsrun import profile
    from nsrun.errors import UsageError

    try:
        return profile.load(req.profile)
    except UsageError as exc:
        raise CniError(netconf.INVALID_CONFIG, f"unusable profile {req.profile!r}", str(exc)) from None


def _firewall_and_bus() -> tuple[str | None, str | None]:
    """NSRUN_FIREWALL and the system bus, as the command line reads them (nsrun.cli.environment)."""
    from nsrun.errors import UsageError

    firewall = os.environ.get("NSRUN_FIREWALL") or None
    if firewall:
        from nsrun import profile

        try:
            firewall = profile.requested_firewall(firewall)
        except UsageError as exc:
            raise CniError(netconf.INVALID_ENVIRONMENT, "invalid NSRUN_FIREWALL", str(exc)) from None
    bus = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    if not bus:
        from nsrun.engine.firewall.firewalld import DEFAULT_BUS

        bus = DEFAULT_BUS
    return firewall, bus


def _namespace(req: Request) -> str:
    from nsrun.linux import netns

    assert req.netns is not None
    if not netns.is_network_namespace(req.netns):
        raise CniError(netconf.INVALID_ENVIRONMENT, "invalid CNI_NETNS",
                       f"CNI_NETNS {req.netns} is not a network namespace")
    if netns.ident(req.netns) == netns.ident("/proc/self/ns/net"):
        raise CniError(netconf.INVALID_ENVIRONMENT, "invalid CNI_NETNS",
                       f"CNI_NETNS {req.netns} is the namespace the plugin runs in, not a container's")
    return req.netns


def add(req: Request) -> dict[str, Any]:
    from nsrun.cni import results
    from nsrun.engine import attachment

    _environment(req)
    prof = _profile(req)
    nspath = _namespace(req)
    firewall, bus = _firewall_and_bus()
    _state()
    assert req.container is not None and req.ifname is not None
    ours = attachment.add(req.container, req.ifname, nspath, req.network, prof, firewall, bus)
    return results.in_version(results.merged(req.prev, ours), req.version)


def delete(req: Request) -> None:
    from nsrun.engine import attachment

    from nsrun import state

    _environment(req)
    if not os.path.lexists(state.root()):
        return  # nothing was ever recorded there: nothing to delete, and nothing made
    _state()
    assert req.container is not None and req.ifname is not None
    attachment.delete(req.container, req.ifname)


def check(req: Request) -> None:
    from nsrun.engine import attachment

    _environment(req)
    nspath = _namespace(req)
    _state()
    assert req.container is not None and req.ifname is not None
    attachment.check(req.container, req.ifname, nspath, req.prev)


def collect(req: Request) -> None:
    from nsrun.engine import attachment

    _environment(req)
    _state()
    assert req.valid is not None
    _, failed = attachment.collect(req.network, set(req.valid))
    if failed:
        raise CniError(netconf.NSRUN_FAILED, f"GC of network {req.network} was incomplete", "; ".join(failed))


def status(req: Request) -> None:
    """Would an ADD work? nsrun doctor's findings for the profile, and a free address."""
    from nsrun.commands import doctor

    _environment(req)
    prof = _profile(req)
    firewall, bus = _firewall_and_bus()
    _state()
    problems = [f"{f['what']}" + (f" (fix: {f['fix']})" if f["fix"] else "")
                for f in doctor.check_profile(prof, firewall, bus) if f["level"] == "problem"]
    if prof.wired:
        from nsrun.engine import allocator

        assert prof.bridge is not None
        if len(allocator.FileStore(prof.bridge).taken()) >= len(prof.pool()):
            problems.append(f"every address of profile {prof.name}'s range is leased")
    if problems:
        raise CniError(netconf.NOT_AVAILABLE, f"profile {prof.name} cannot serve ADD on this host",
                       "; ".join(problems))


VERBS = {"ADD": add, "DEL": delete, "CHECK": check, "GC": collect, "STATUS": status}


def _engine_error(exc: Exception) -> CniError | None:
    """The CniError for an error of nsrun's own (None: not one)."""
    from nsrun.engine import attachment
    from nsrun.engine.resources.namespace import IfnameTaken
    from nsrun.errors import NsrunError, UsageError

    if not isinstance(exc, NsrunError):
        return None
    text = str(exc)
    if isinstance(exc, attachment.Busy):
        return CniError(netconf.TRY_AGAIN_LATER, "the attachment is busy: try again later", text)
    if isinstance(exc, attachment.Mismatch):
        return CniError(netconf.CHECK_FAILED, "the attachment is not as ADD made it", text)
    if isinstance(exc, IfnameTaken):
        return CniError(netconf.INVALID_ENVIRONMENT, "invalid CNI_IFNAME", text)
    if isinstance(exc, UsageError):
        return CniError(netconf.INVALID_CONFIG, "the profile cannot be used here", text)
    return CniError(netconf.NSRUN_FAILED, "nsrun failed", text)


def run(environ: Any = None) -> tuple[int, dict[str, Any] | None]:
    """(exit status, what to print) for one invocation."""
    environ = os.environ if environ is None else environ
    version = "1.0.0"
    try:
        command = netconf.command_of(environ)
        data = _read_stdin()
        if command == "VERSION":
            from nsrun.cni import results

            return 0, results.versions(netconf.version_of(data))
        version = netconf.answer_version(data)
        req = netconf.parse(environ, data, command)
        out = VERBS[command](req)
        return 0, out
    except CniError as exc:
        return 1, _error(exc.code, exc.msg, exc.details, version)
    except Exception as exc:
        mapped = _engine_error(exc)
        if mapped is not None:
            return 1, _error(mapped.code, mapped.msg, mapped.details, version)
        _debug()
        return 1, _error(netconf.INTERNAL, "internal error", f"{type(exc).__name__}: {exc}", version)


def _error(code: int, msg: str, details: str, version: str) -> dict[str, Any]:
    from nsrun.cni import results

    return results.error(code, msg, details, version)


def _debug() -> None:
    if os.environ.get("NSRUN_DEBUG") == "1":
        import traceback

        traceback.print_exc(file=sys.stderr)


def main() -> int:
    try:
        code, out = run()
    except BaseException as exc:  # KeyboardInterrupt, or a failure while reporting one
        _debug()
        code, out = 1, {"cniVersion": "1.0.0", "code": netconf.INTERNAL, "msg": "internal error",
                        "details": f"{type(exc).__name__}: {exc}"}
    if out is not None:
        try:
            _emit(out)
        except OSError:
            pass
    return code


if __name__ == "__main__":
    sys.exit(main())
