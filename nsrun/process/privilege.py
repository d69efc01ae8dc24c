"""Checks that nsrun may change the network before it tries anything."""

from __future__ import annotations

import errno
import os

from nsrun.errors import UsageError

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise  # out of descriptors: not a lack of capabilities
    return 0


def require_root(state_dir: bool = True) -> None:
    """Root with CAP_NET_ADMIN and CAP_SYS_ADMIN, else UsageError; and (STATE_DIR) a state
    directory safe to use from here (state.check_root). `demo` and `doctor` keep no state."""
    if os.geteuid() != 0:
        raise UsageError("must be run as root (try: sudo nsrun ...): namespaces, links and firewall rules need it")
    caps = _effective_caps()
    missing = [n for bit, n in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"))
               if not caps & (1 << bit)]
    if missing:
        raise UsageError(f"running as root without {' and '.join(missing)}; nsrun needs both")
    if state_dir:
        from nsrun import state

        state.check_root()
