"""Importing python-iptables cheaply, for the iptables firewall backend and the lab's
gateways: point it at the xtables directory and library version (else it runs ldconfig and
gcc probes, ~200 ms), and skip its distutils probe (which imports setuptools).
"""

from __future__ import annotations

import os
import sys
from typing import Any

_iptc: Any = None


def _fast_find_library(original: Any) -> Any:
    """ctypes.util.find_library without its ldconfig/gcc subprocesses, for known libraries."""
    import glob
    dirs = [d for d in glob.glob("/usr/lib/*-linux-gnu") + ["/usr/lib64", "/usr/lib", "/lib64", "/lib"]
            if os.path.isdir(d)]

    def find(name: str) -> str | None:
        for d in dirs:
            if ".so" in name:  # already a file name (libxtables.so.12)
                if os.path.exists(f"{d}/{name}"):
                    return name
                continue
            found = sorted(glob.glob(f"{d}/lib{name}.so.*"))
            if found:
                return os.path.basename(found[0])
        # python-iptables' own extension (libxtwrapper.cpython-*.so) lies beside it on
        # sys.path: the original would run ldconfig and four gcc probes (~100 ms) first.
        if "/" not in name and ".." not in name:
            for d in filter(None, sys.path):
                own = sorted(glob.glob(f"{glob.escape(d)}/lib{name.removeprefix('lib')}.cpython-*.so"))
                if own:
                    return own[0]
        return original(name)  # type: ignore[no-any-return]

    return find


def load() -> Any:
    """The iptc module, imported once."""
    global _iptc
    if _iptc is not None:
        return _iptc
    import ctypes.util  # here, not at the top: the firewall modules that import this one are
    import glob  # imported by every setup, python-iptables by few
    if "XTABLES_LIBDIR" not in os.environ:
        for d in glob.glob("/usr/lib/*/xtables") + ["/usr/lib64/xtables", "/usr/lib/xtables"]:
            if os.path.isfile(f"{d}/libxt_comment.so"):
                os.environ["XTABLES_LIBDIR"] = d
                libs = sorted(glob.glob(f"{os.path.dirname(d)}/libxtables.so.*"), key=len)
                if libs and "PYTHON_IPTABLES_XTABLES_VERSION" not in os.environ:
                    os.environ["PYTHON_IPTABLES_XTABLES_VERSION"] = libs[0].rsplit(".so.", 1)[1]
                break
    original = ctypes.util.find_library
    ctypes.util.find_library = _fast_find_library(original)
    blocked = "distutils.sysconfig" not in sys.modules
    if blocked:
        sys.modules["distutils.sysconfig"] = None  # type: ignore[assignment]
    try:
        import iptc
    except Exception as exc:  # a missing libiptc/libxtables
        from nsrun.errors import NsrunError

        raise NsrunError(f"cannot load python-iptables ({exc}); is the iptables package installed?") from None
    finally:
        ctypes.util.find_library = original
        if blocked:
            del sys.modules["distutils.sysconfig"]
    _iptc = iptc
    return iptc
