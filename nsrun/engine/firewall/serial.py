"""One lock for every call into libiptc (python-iptables) and libnftables in a process.

Neither library is safe to call from two threads at once: python-iptables shares one handle
per table per process, and a thread that commits frees it under another (a segmentation
fault, seen when the service, nsrun.service, set up namespaces in threads). A process that
sets up one namespace at a time (the CLI) takes the lock uncontended; the service's threads
wait their turn for the firewall alone, and do everything else concurrently.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

LOCK = threading.RLock()  # re-entrant: a serialized function may call another
F = TypeVar("F", bound=Callable[..., Any])


def serialized(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with LOCK:
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
