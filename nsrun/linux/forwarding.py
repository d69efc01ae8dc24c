"""Who else manages net.ipv4.ip_forward on this host: for `nsrun doctor`, read only.

nsrun turns ip_forward on while a NAT bridge of its own exists and puts back what it found
(nsrun.engine.resources.masquerade keeps the value it changed in `forwarding.json`). Others
set it too, and the user should know when they do:
- it is on and nsrun did not turn it on: nsrun leaves it on when its last bridge goes (it
  puts back only what it changed);
- a sysctl configuration file sets it (`sysctl --system`, systemd-sysctl, procps at boot):
  set to 0, a re-run of those turns forwarding off under a running NAT bridge;
- systemd-networkd (`IPForward=`/`IPv4Forwarding=` in a .network file or networkd.conf)
  and NetworkManager (a connection shared to other computers, `method=shared`, turns it on
  while that connection is up) manage it for the interfaces they bring up.
What the files say is reported as found; nothing here writes anything.
"""

from __future__ import annotations

import glob
import os
import re

# systemd-sysctl's and procps' directories, lowest precedence last; /etc/sysctl.conf too.
SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d",
               "/lib/sysctl.d")
SYSCTL_CONF = "/etc/sysctl.conf"
NETWORKD_GLOBS = ("/etc/systemd/network/*.network", "/run/systemd/network/*.network",
                  "/usr/lib/systemd/network/*.network", "/etc/systemd/networkd.conf",
                  "/etc/systemd/networkd.conf.d/*.conf")
NM_GLOBS = ("/etc/NetworkManager/system-connections/*.nmconnection", "/run/NetworkManager/system-connections/*.nmconnection")
KEYS = {"net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"}
MAX_BYTES = 1 << 20


def _lines(path: str) -> list[str]:
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_BYTES).decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def sysctl_files() -> list[tuple[str, str]]:
    """(file, value) for each sysctl configuration line that sets ip_forward, in the order
    systemd-sysctl applies them (a later one wins): files by name across the directories,
    a name in an earlier directory hiding the same name in later ones; /etc/sysctl.conf
    last, as procps reads it after them."""
    chosen: dict[str, str] = {}
    for d in SYSCTL_DIRS:
        for path in sorted(glob.glob(os.path.join(d, "*.conf"))):
            chosen.setdefault(os.path.basename(path), path)
    paths = [chosen[name] for name in sorted(chosen)] + [SYSCTL_CONF]
    out = []
    for path in paths:
        for line in _lines(path):
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            key, sep, value = line.lstrip("-").partition("=")
            if sep and key.strip().replace("/", ".") in KEYS:
                out.append((path, value.strip()))
    return out


def managers() -> list[str]:
    """systemd-networkd and NetworkManager configuration that sets forwarding: one
    description each."""
    out = []
    for pattern in NETWORKD_GLOBS:
        for path in sorted(glob.glob(pattern)):
            for line in _lines(path):
                m = re.match(r"\s*(IPForward|IPv4Forwarding)\s*=\s*(\S+)", line)
                if m:
                    out.append(f"systemd-networkd: {path} sets {m.group(1)}={m.group(2)}")
    for pattern in NM_GLOBS:
        for path in sorted(glob.glob(pattern)):
            section = ""
            for line in _lines(path):
                s = line.strip()
                if s.startswith("["):
                    section = s
                elif section == "[ipv4]" and re.fullmatch(r"method\s*=\s*shared", s):
                    out.append(f"NetworkManager: {path} shares its connection (ipv4 method=shared), "
                               "which turns ip_forward on while it is up")
    return out
