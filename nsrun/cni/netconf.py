"""The CNI request: CNI_COMMAND and the other CNI_* variables, and the network configuration
on stdin, validated into a `Request` before anything else happens; every refusal is a
`CniError` with the spec's code (docs/cni.md lists them). Pure: no file, no engine.

The configuration (a plugin's, standalone or the first of a `plugins` list, as the runtime
derives it):

    {"cniVersion": "1.0.0", "name": "gw1net", "type": "nsrun", "profile": "gw1",
     "stateDir": "/run/nsrun", "profilePath": ["/etc/nsrun/profiles"]}

`profile` is a name on the profile path or an absolute path to a .toml file (the checks of
`-p`); `stateDir` and `profilePath` (optional) stand for NSRUN_STATE_DIR and
NSRUN_PROFILE_PATH where a runtime passes no environment of its own choosing. Keys of other
plugins' and the runtime's (`runtimeConfig`, `capabilities`, `args`, `dns`...) are left
alone; `ipam` is refused: nsrun hands out the profile's addresses itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
TYPE_CHECKING = False  # typing costs ~5 ms to import: for mypy only

from nsrun import names

if TYPE_CHECKING:
    from typing import Any

SUPPORTED = ("0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
PLUGIN_TYPE = "nsrun"
MAX_CONFIG = 1 << 20  # bytes of stdin read; a network configuration is a few hundred

# The spec's error codes that nsrun gives (docs/cni.md), and its own (100 and up).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NSRUN_FAILED = 100
CHECK_FAILED = 101
INTERNAL = 999


class CniError(Exception):
    """A refusal or failure as the spec reports it: CODE, a short MSG, DETAILS."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


class Request:
    """What one invocation asks (a plain class: NamedTuple would import `typing`, ~7 ms)."""

    __slots__ = ("command", "version", "network", "profile", "container", "ifname", "netns", "prev", "valid",
                 "state_dir", "profile_path")

    def __init__(self, *, command: str, version: str, network: str, profile: str | None, container: str | None,
                 ifname: str | None, netns: str | None, prev: dict[str, Any] | None,
                 valid: frozenset[tuple[str, str]] | None, state_dir: str | None, profile_path: str | None) -> None:
        self.command = command
        self.version = version  # the configuration's cniVersion
        self.network = network  # its name
        self.profile = profile  # the profile spec (None: DEL, which needs none, was given none)
        self.container = container  # CNI_CONTAINERID (ADD, DEL, CHECK)
        self.ifname = ifname  # CNI_IFNAME (ADD, DEL, CHECK)
        self.netns = netns  # CNI_NETNS (ADD, CHECK; DEL's when given)
        self.prev = prev  # prevResult
        self.valid = valid  # GC: cni.dev/valid-attachments
        self.state_dir = state_dir
        self.profile_path = profile_path  # colon-separated, as NSRUN_PROFILE_PATH

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields()[:3])

    def __repr__(self) -> str:
        return "Request(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


def version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def command_of(environ: Mapping[str, str]) -> str:
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        shown = repr(command) if command else "missing"
        raise CniError(INVALID_ENVIRONMENT, "invalid CNI_COMMAND",
                       f"CNI_COMMAND is {shown}; nsrun knows {', '.join(COMMANDS)}")
    return command


def decode(data: bytes) -> dict[str, Any]:
    """DATA (stdin) as a JSON object, else CniError 6."""
    try:
        conf = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CniError(DECODING_FAILURE, "the network configuration is not JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "the network configuration is not a JSON object",
                       f"stdin holds a JSON {type(conf).__name__}")
    return conf


def version_of(data: bytes) -> str:
    """VERSION's cniVersion: the one on stdin, or "0.1.0" (the spec's default) when stdin
    holds none; CniError 6 when it is not JSON."""
    if not data.strip():
        return "0.1.0"
    value = decode(data).get("cniVersion", "0.1.0")
    if not isinstance(value, str):
        raise CniError(DECODING_FAILURE, "cniVersion is not a string", f"cniVersion is {value!r}")
    return value


def answer_version(data: bytes) -> str:
    """The version to answer DATA in, errors included: its cniVersion when nsrun speaks it,
    else 1.0.0."""
    try:
        version = json.loads(data).get("cniVersion")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return "1.0.0"
    return version if version in SUPPORTED else "1.0.0"


def _invalid(msg: str, details: str = "") -> CniError:
    return CniError(INVALID_CONFIG, msg, details)


def _string(conf: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = conf.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        got = "missing" if value is None else f"{value!r}"
        raise _invalid(f"invalid network configuration: {key}", f"{key} must be a non-empty string; it is {got}")
    return value


def _profile_path(conf: dict[str, Any]) -> str | None:
    raw = conf.get("profilePath")
    if raw is None:
        return None
    dirs = raw.split(":") if isinstance(raw, str) else raw
    if not isinstance(dirs, list) or not dirs or not all(isinstance(d, str) and d.startswith("/") for d in dirs):
        raise _invalid("invalid network configuration: profilePath",
                       "profilePath must be absolute directories: a list of them, or one string "
                       f"separated by ':'; it is {raw!r}")
    return ":".join(dirs)


def _env(environ: Mapping[str, str], key: str, required: bool) -> str | None:
    value = environ.get(key) or None
    if value is None and required:
        raise CniError(INVALID_ENVIRONMENT, f"{key} is missing", f"CNI_COMMAND {environ.get('CNI_COMMAND')} needs {key}")
    return value


def _attachment_env(environ: Mapping[str, str], command: str) -> tuple[str, str, str | None]:
    container = _env(environ, "CNI_CONTAINERID", True)
    ifname = _env(environ, "CNI_IFNAME", True)
    assert container is not None and ifname is not None
    problem = names.container_problem(container)
    if problem:
        raise CniError(INVALID_ENVIRONMENT, "invalid CNI_CONTAINERID", f"CNI_CONTAINERID {problem}")
    problem = names.ifname_problem(ifname)
    if problem:
        raise CniError(INVALID_ENVIRONMENT, "invalid CNI_IFNAME", f"CNI_IFNAME {ifname!r} {problem}")
    nspath = _env(environ, "CNI_NETNS", command in ("ADD", "CHECK"))
    if nspath is not None and not nspath.startswith("/"):
        raise CniError(INVALID_ENVIRONMENT, "invalid CNI_NETNS", f"CNI_NETNS {nspath!r} is not an absolute path")
    return container, ifname, nspath


def _valid_attachments(conf: dict[str, Any]) -> frozenset[tuple[str, str]]:
    raw = conf.get("cni.dev/valid-attachments")
    bad = _invalid("invalid network configuration: cni.dev/valid-attachments",
                   "GC needs cni.dev/valid-attachments, a list of objects with the strings "
                   "containerID and ifname (nsrun collects nothing on a list it cannot read)")
    if not isinstance(raw, list):
        raise bad
    out = set()
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                or not isinstance(item.get("ifname"), str):
            raise bad
        out.add((item["containerID"], item["ifname"]))
    return frozenset(out)


def parse(environ: Mapping[str, str], data: bytes, command: str | None = None) -> Request:
    """The request of ENVIRON and DATA (stdin), validated; COMMAND: CNI_COMMAND, read when
    None. Not for VERSION (version_of)."""
    command = command or command_of(environ)
    conf = decode(data)
    version = conf.get("cniVersion")
    if not isinstance(version, str):
        raise CniError(DECODING_FAILURE if version is not None else INCOMPATIBLE_VERSION,
                       "cniVersion is missing" if version is None else "cniVersion is not a string",
                       f"nsrun supports {', '.join(SUPPORTED)}")
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI version {version}",
                       f"nsrun supports {', '.join(SUPPORTED)}")
    if command in ("GC", "STATUS") and version_key(version) < (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"config version {version} does not allow {command}",
                       f"{command} came with CNI 1.1.0")
    network = _string(conf, "name")
    kind = _string(conf, "type")
    assert network is not None
    if kind != PLUGIN_TYPE:
        raise _invalid("invalid network configuration: type", f"type is {kind!r}; this plugin is {PLUGIN_TYPE!r}")
    profile = _string(conf, "profile", required=command not in ("DEL", "GC"))
    if conf.get("ipam"):
        raise CniError(UNSUPPORTED_FIELD, "unsupported field: ipam",
                       f"ipam = {json.dumps(conf['ipam'])[:200]}: nsrun hands out the addresses of the "
                       "profile's range itself; remove ipam")
    state_dir = _string(conf, "stateDir", required=False)
    if state_dir is not None and not state_dir.startswith("/"):
        raise _invalid("invalid network configuration: stateDir", f"stateDir {state_dir!r} is not an absolute path")
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(DECODING_FAILURE, "prevResult is not a JSON object", f"prevResult is {prev!r:.200}")
    if command == "CHECK" and not prev:
        raise _invalid("CHECK needs prevResult", "the runtime passes the Result of the ADD as prevResult")
    container = ifname = nspath = None
    if command in ("ADD", "DEL", "CHECK"):
        container, ifname, nspath = _attachment_env(environ, command)
    return Request(command=command, version=version, network=network, profile=profile, container=container,
                   ifname=ifname, netns=nspath, prev=prev if command != "DEL" else None,
                   valid=_valid_attachments(conf) if command == "GC" else None,
                   state_dir=state_dir, profile_path=_profile_path(conf))
