"""The policy: which users without root may use which profiles and named namespaces.

`/etc/nsrun/policy.toml` is read by the service (`nsrun daemon`) to decide what a caller
that is not root may ask of it. It grants; everything it does not grant is refused, and a
missing file grants nothing (only root may use nsrun then, as without the service).

Like sudoers and like profiles, the file runs things as root on a user's behalf, so
whoever could write it could give themselves anything: it is refused unless it is a
regular file owned by root and writable by nobody else, reached through directories
owned by root that nobody else may write (a world-writable directory counts when its
sticky bit is set, as /tmp's is), with no symbolic link on the way. The checks are made
on the open file and directories (openat, O_NOFOLLOW), so nothing can be swapped in
between check and use. It is at most 64 KiB of UTF-8 TOML with a strict schema: an
unknown key, a wrong type, a name that cannot be a user, group, profile or namespace is
an error naming the file, the key and the reason, in one line (docs/policy.md).

Who the caller is comes from the kernel (SO_PEERCRED: uid and gid) and the user database
(`Caller.from_uid`: the user's name and supplementary groups, os.getgrouplist); never from
anything the client says. The checks (`Policy.may_run` and the rest) are pure functions of
the parsed policy and the caller: None means allowed, else the reason for a one-line refusal.

A profile name the policy allows is always a plain name (no '/', no `.toml` suffix): a
caller without root never names a file, whatever the policy says (`*` included).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import stat
import tomllib
from typing import Any, NamedTuple

from nsrun import names
from nsrun.errors import ProfileError, UsageError

DEFAULT_PATH = "/etc/nsrun/policy.toml"
DEFAULT_LIMIT = 8  # live namespaces per user, for rules that set no limit
MAX_LIMIT = 100000
MAX_FILE_BYTES = 64 * 1024
MAX_ENTRIES = 1024  # per list
ANY = "*"
TOP_KEYS = ("version", "limit", "allow")
RULE_KEYS = ("users", "groups", "profiles", "create", "enter", "remove", "limit", "publish")
PLACEHOLDERS = ("{user}", "{uid}")
# A user or group name as shadow-utils accepts them (NAME_REGEX, plus '$' for machine accounts).
_ACCOUNT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")
# A namespace name pattern: namespace name characters and the glob's * and ?.
_PATTERN_RE = re.compile(r"[A-Za-z0-9_.*?-]{1,64}")
_PLACEHOLDER_RE = re.compile(r"(\{user\}|\{uid\})")
# `create` when a rule sets none: names of the user's own, never a name root may use
# (`vpn`, `gw1` before `nsrun@gw1.service` starts): docs/policy.md, docs/systemd.md.
DEFAULT_CREATE = ("{user}-*",)


class PolicyError(ProfileError):
    """A policy file that cannot be used: names the file, the key and the reason (exit 2)."""


class Caller(NamedTuple):
    """Who asks: uid and gid from the kernel (SO_PEERCRED), the rest from the user database."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary groups (the primary gid may be among them)
    name: str | None = None  # the user's name; None when the uid has no passwd entry
    group_names: tuple[str, ...] = ()  # names of gid and groups that have one

    @classmethod
    def from_uid(cls, uid: int, gid: int) -> Caller:
        """The caller with UID and GID (the kernel's word for them), with the name and the
        supplementary groups the user database gives that user. A uid without a passwd
        entry has its gid alone."""
        try:
            name: str | None = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = None
        gids: list[int] = [gid]
        if name is not None:
            try:
                gids = os.getgrouplist(name, gid)
            except OSError:
                pass
        groups = tuple(dict.fromkeys(gids))
        group_names = []
        for g in dict.fromkeys((gid, *groups)):
            try:
                group_names.append(grp.getgrgid(g).gr_name)
            except KeyError:
                pass
        return cls(uid, gid, groups, name, tuple(group_names))

    def describe(self) -> str:
        return f"user {self.name} (uid {self.uid})" if self.name else f"uid {self.uid}"


class Rule(NamedTuple):
    """One `[[allow]]` table."""

    number: int  # 1-based, for messages
    uids: frozenset[int]
    user_names: frozenset[str]
    gids: frozenset[int]
    group_names: frozenset[str]
    profiles: tuple[str, ...]  # names, or ANY
    create: tuple[str, ...]  # namespace name patterns
    enter: tuple[str, ...]
    remove: tuple[str, ...]
    limit: int
    # host ports they may publish with -P (inclusive ranges); () none, the default
    publish: tuple[tuple[int, int], ...] = ()

    def matches(self, caller: Caller) -> bool:
        if caller.uid in self.uids or (caller.name is not None and caller.name in self.user_names):
            return True
        if self.gids & ({caller.gid} | set(caller.groups)):
            return True
        return bool(self.group_names & set(caller.group_names))

    def allows_profile(self, name: str) -> bool:
        return ANY in self.profiles or name in self.profiles


class Policy(NamedTuple):
    source: str
    rules: tuple[Rule, ...]
    present: bool = True  # False: there is no policy file (only root is allowed)

    def _rules(self, caller: Caller) -> list[Rule]:
        return [r for r in self.rules if r.matches(caller)]

    def _nobody(self, caller: Caller) -> str:
        if not self.present:
            return f"{caller.describe()} is not root, and there is no policy ({self.source} is missing)"
        return f"{caller.describe()} is not allowed by the policy ({self.source})"

    def may_run(self, caller: Caller, profile_name: str) -> str | None:
        """Whether CALLER may have a namespace made with profile PROFILE_NAME (a plain name:
        a path is refused whatever the policy says). None: allowed; else why not."""
        if caller.uid == 0:
            return None
        problem = profile_name_problem(profile_name)
        if problem:
            return f"{problem} ({caller.describe()} may name profiles only)"
        rules = self._rules(caller)
        if not rules:
            return self._nobody(caller)
        if any(r.allows_profile(profile_name) for r in rules):
            return None
        return f"{caller.describe()} may not use profile {profile_name!r} ({self.source})"

    def may_create(self, caller: Caller, ns_name: str) -> str | None:
        """Whether CALLER may create the named namespace NS_NAME (it would be theirs)."""
        if caller.uid == 0:
            return None
        problem = ns_name_problem(ns_name)
        if problem:
            return problem
        rules = self._rules(caller)
        if not rules:
            return self._nobody(caller)
        if any(_matches(caller, ns_name, r.create) for r in rules):
            return None
        return f"{caller.describe()} may not create namespace {ns_name!r} ({self.source})"

    def may_enter(self, caller: Caller, ns_name: str, owner_uid: int | None) -> str | None:
        """Whether CALLER may run a program in NS_NAME, whose owner is OWNER_UID (None:
        unknown, not made through the service): their own, or one the policy names."""
        return self._may_use(caller, ns_name, owner_uid, "enter")

    def may_remove(self, caller: Caller, ns_name: str, owner_uid: int | None) -> str | None:
        """Whether CALLER may take NS_NAME (owned by OWNER_UID) down."""
        return self._may_use(caller, ns_name, owner_uid, "remove")

    def _may_use(self, caller: Caller, ns_name: str, owner_uid: int | None, what: str) -> str | None:
        if caller.uid == 0:
            return None
        problem = ns_name_problem(ns_name)
        if problem:
            return problem
        rules = self._rules(caller)
        if not rules:
            return self._nobody(caller)
        if owner_uid is not None and owner_uid == caller.uid:
            return None
        if any(_matches(caller, ns_name, r.enter if what == "enter" else r.remove) for r in rules):
            return None
        whose = "whose owner is unknown" if owner_uid is None else f"owned by uid {owner_uid}"
        return f"{caller.describe()} may not {what} namespace {ns_name!r} ({whose}; {self.source})"

    def may_publish(self, caller: Caller, host_ports: list[int]) -> str | None:
        """Whether CALLER may publish each of HOST_PORTS (-P, on a namespace made for them):
        only as a rule's `publish` says (a host port answers for the whole host: it is not
        a user's to take by default)."""
        if caller.uid == 0 or not host_ports:
            return None
        rules = self._rules(caller)
        if not rules:
            return self._nobody(caller)
        for port in host_ports:
            if not any(lo <= port <= hi for r in rules for lo, hi in r.publish):
                return f"{caller.describe()} may not publish host port {port} ({self.source}: `publish` in a rule)"
        return None

    def limit(self, caller: Caller) -> int | None:
        """How many namespaces CALLER may have live at once: None for root (no limit), 0
        for a caller the policy does not name, else the largest of its rules' limits."""
        if caller.uid == 0:
            return None
        return max((r.limit for r in self._rules(caller)), default=0)


def _matches(caller: Caller, ns_name: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if "{user}" in pattern and caller.name is None:
            continue
        if _pattern_re(pattern, caller.name or "", caller.uid).fullmatch(ns_name):
            return True
    return False


def _pattern_re(pattern: str, user: str, uid: int) -> re.Pattern[str]:
    """PATTERN as a regular expression: its own `*` and `?` are the only wildcards; what
    `{user}` and `{uid}` stand for is matched literally (a user named `x3b*` or `[a-z]x`
    is not a pattern: fnmatch has no escape, so the pattern is built here)."""
    out = []
    for part in _PLACEHOLDER_RE.split(pattern):
        if part == "{user}":
            out.append(re.escape(user))
        elif part == "{uid}":
            out.append(re.escape(str(uid)))
        else:
            out.append("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in part))
    return re.compile("".join(out), re.DOTALL)


def profile_name_problem(name: str) -> str | None:
    """Why NAME cannot be a profile a caller without root names, or None: a plain name as
    the profile path knows them (profile.find), never a path or a `.toml` file."""
    if not isinstance(name, str) or not name:
        return "empty profile name"
    if "/" in name or name.endswith(".toml"):
        return f"profile {name!r} is a path"
    if name.startswith(".") or not all(c.isascii() and (c.isalnum() or c in "_.-") for c in name) \
            or len(name) > 64:
        return f"invalid profile name {name!r}"
    return None


def ns_name_problem(name: str) -> str | None:
    """Why NAME cannot be a named namespace a caller without root names, or None."""
    try:
        names.check_name(name)
    except UsageError as exc:
        return str(exc)
    if names.is_ephemeral(name):
        return f"namespace name {name!r} is reserved for nsrun's own ephemeral namespaces"
    return None


# -- parsing -----------------------------------------------------------------------------

def parse(text: str, source: str) -> Policy:
    """Validate TOML TEXT as a policy; PolicyError naming SOURCE, the key and the reason."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source, None, f"TOML syntax error: {' '.join(str(exc).split())}") from None
    except (ValueError, RecursionError) as exc:
        raise PolicyError(source, None, f"cannot be read as TOML: {' '.join(str(exc).split())}") from None
    return validate(data, source)


def _unknown(source: str, where: str | None, key: str, known: tuple[str, ...]) -> PolicyError:
    return PolicyError(source, where, f"unknown key {key!r}; known keys: {', '.join(known)}")


def _limit(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(source, key, f"must be an integer, not {type(value).__name__}")
    if not 0 <= value <= MAX_LIMIT:
        raise PolicyError(source, key, f"{value} is out of range 0..{MAX_LIMIT}")
    return value


def validate(data: dict[str, Any], source: str) -> Policy:
    for key in data:
        if key not in TOP_KEYS:
            raise _unknown(source, None, key, TOP_KEYS)
    version = data.get("version", 1)
    if isinstance(version, bool) or version != 1:
        raise PolicyError(source, "version", f"{version!r} is not a policy version nsrun knows (1)")
    default_limit = _limit(source, "limit", data["limit"]) if "limit" in data else DEFAULT_LIMIT
    raw = data.get("allow", [])
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise PolicyError(source, "allow", "must be an array of tables ([[allow]])")
    if len(raw) > MAX_ENTRIES:
        raise PolicyError(source, "allow", f"has {len(raw)} tables; at most {MAX_ENTRIES}")
    rules = tuple(_rule(source, i, r, default_limit) for i, r in enumerate(raw, 1))
    return Policy(source, rules)


def _strings(source: str, key: str, value: Any, ids: bool = False) -> list[str | int]:
    if not isinstance(value, list):
        raise PolicyError(source, key, f"must be an array, not {type(value).__name__}")
    if len(value) > MAX_ENTRIES:
        raise PolicyError(source, key, f"has {len(value)} entries; at most {MAX_ENTRIES}")
    for item in value:
        if ids and isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < 2**32 - 1:
                raise PolicyError(source, key, f"{item} is not a valid id")
            continue
        if not isinstance(item, str):
            want = "names (strings) or ids (integers)" if ids else "strings"
            raise PolicyError(source, key, f"must hold {want}, not {type(item).__name__}")
    return list(value)


def _rule(source: str, index: int, raw: dict[str, Any], default_limit: int) -> Rule:
    where = f"allow[{index}]"
    for key in raw:
        if key not in RULE_KEYS:
            raise _unknown(source, where, key, RULE_KEYS)
    uids: set[int] = set()
    user_names: set[str] = set()
    gids: set[int] = set()
    group_names: set[str] = set()
    for key, ids, nameset in (("users", uids, user_names), ("groups", gids, group_names)):
        for item in _strings(source, f"{where}.{key}", raw.get(key, []), ids=True):
            if isinstance(item, int):
                ids.add(item)
            elif not _ACCOUNT_RE.fullmatch(item):
                raise PolicyError(source, f"{where}.{key}", f"{item!r} is not a valid "
                                  f"{key[:-1]} name (a number is an id: write it without quotes)")
            else:
                nameset.add(item)
    if not (uids or user_names or gids or group_names):
        raise PolicyError(source, where, "names no users and no groups: it would allow nobody")
    profiles = []
    for item in _strings(source, f"{where}.profiles", raw.get("profiles", [])):
        assert isinstance(item, str)
        problem = profile_name_problem(item) if item != ANY else None
        if problem:
            raise PolicyError(source, f"{where}.profiles", f"{problem}; give profile names, or \"*\"")
        profiles.append(item)
    patterns: dict[str, tuple[str, ...]] = {}
    for key, default in (("create", list(DEFAULT_CREATE)), ("enter", []), ("remove", [])):
        items = _strings(source, f"{where}.{key}", raw.get(key, default))
        for item in items:
            assert isinstance(item, str)
            bare = item
            for ph in PLACEHOLDERS:
                bare = bare.replace(ph, "x")
            if not _PATTERN_RE.fullmatch(bare) or bare[0] in ".-":
                raise PolicyError(source, f"{where}.{key}", f"{item!r} is not a namespace name pattern "
                                  "(namespace name characters, * and ?, {user} and {uid})")
        patterns[key] = tuple(str(i) for i in items)
    limit = _limit(source, f"{where}.limit", raw["limit"]) if "limit" in raw else default_limit
    publish = _publish(source, f"{where}.publish", raw["publish"]) if "publish" in raw else ()
    return Rule(index, frozenset(uids), frozenset(user_names), frozenset(gids), frozenset(group_names),
                tuple(profiles), patterns["create"], patterns["enter"], patterns["remove"], limit, publish)


def _publish(source: str, key: str, value: Any) -> tuple[tuple[int, int], ...]:
    """`publish = true` (any host port), `false` (none), or a list of ports and ranges
    ("8080", "8000-8999")."""
    if isinstance(value, bool):
        return ((1, 65535),) if value else ()
    ranges = []
    for item in _strings(source, key, value):
        assert isinstance(item, str)
        lo, dash, hi = item.partition("-")
        try:
            first, last = int(lo), int(hi if dash else lo)
        except ValueError:
            first = last = 0
        if not (lo.isdigit() and (hi.isdigit() or not dash) and 1 <= first <= last <= 65535):
            raise PolicyError(source, key, f"{item!r} is not a port or a range of ports such as \"8000-8999\" "
                              "(1..65535); or write true or false")
        ranges.append((first, last))
    return tuple(ranges)


# -- the file ----------------------------------------------------------------------------

def _refuse_unsafe(st: os.stat_result, shown: str, source: str, directory: bool) -> None:
    what = "directory " + shown if directory else "the file"
    if st.st_uid != 0:
        raise PolicyError(source, None, f"refused: {what} is owned by uid {st.st_uid}, not root")
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (directory and st.st_mode & stat.S_ISVTX):
        raise PolicyError(source, None, f"refused: {what} is group- or world-writable "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod go-w it")


def load(path: str = DEFAULT_PATH) -> Policy:
    """The policy in PATH (a missing file: nobody but root is allowed); PolicyError when the
    file is unsafe (see the module's docstring) or invalid."""
    from nsrun import profile

    path = os.path.abspath(path)
    source = path
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise PolicyError(source, None, "is not a regular file")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _refuse_unsafe(os.fstat(fd), "/", source, True)
        walked = ""
        for part in parts[:-1]:
            walked += "/" + part
            try:
                nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                return Policy(source, (), present=False)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP) and stat.S_ISLNK(
                        os.lstat(part, dir_fd=fd).st_mode):
                    raise PolicyError(source, None, f"refused: {walked} is a symbolic link") from None
                raise PolicyError(source, None, f"cannot open {walked}: {exc.strerror}") from None
            os.close(fd)
            fd = nxt
            _refuse_unsafe(os.fstat(fd), walked, source, True)
        try:
            ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            return Policy(source, (), present=False)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PolicyError(source, None, "refused: is a symbolic link") from None
            raise PolicyError(source, None, f"cannot open: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        st = os.fstat(ffd)
        if not stat.S_ISREG(st.st_mode):
            raise PolicyError(source, None, "is not a regular file")
        _refuse_unsafe(st, source, source, False)
        try:
            text = profile.read_text(ffd, source, MAX_FILE_BYTES)
        except ProfileError as exc:
            raise PolicyError(source, None, exc.reason) from None
    finally:
        os.close(ffd)
    return parse(text, source)
