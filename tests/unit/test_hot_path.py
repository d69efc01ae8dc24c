"""The hot path's import budget: a run or an exec through the service reaches the client
without importing what only the daemonless path needs (the profile module and with it
tomllib, re, enum, typing: ~15 ms a run), typer, or a C library. A regression here once
doubled the cost of a run through the service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("nsrun.profile", "tomllib", "re", "enum", "typing", "typer", "pyroute2", "iptc", "ctypes", "psutil")
PROBE = """
import sys
from nsrun.cli import main
from nsrun.process import client
def reached(*args, **kwargs):
    print(sorted(m for m in {heavy!r} if m in sys.modules))
    raise SystemExit(0)
client.run = client.exec_in = reached
main.main({argv!r})
"""


@pytest.mark.parametrize("argv", [["-p", "nat", "--", "true"], ["--profile=gw1", "-n", "x", "--", "true"],
                                  ["exec", "blue", "--", "true"], ["exec", "blue", "true"]])
def test_the_client_is_reached_without_heavy_imports(argv: list[str]) -> None:
    # -I -S: as install.sh's launcher runs nsrun; the checkout first on the path.
    code = f"import sys; sys.path.insert(0, {str(REPO)!r})\n" + PROBE.format(heavy=HEAVY, argv=argv)
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"imported on the way to the service: {r.stdout.strip()}"


def test_python_iptables_loads_without_ldconfig_or_gcc() -> None:
    # ctypes.util.find_library runs `ldconfig -p` and gcc/ld probes for a name it cannot
    # place: python-iptables' own libxtwrapper did that, ~100 ms on every cold run's setup
    # and again in its teardown.
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "import subprocess\n"
            "started = []\n"
            "real = subprocess.Popen.__init__\n"
            "def spy(self, args, *a, **k):\n"
            "    started.append(args if isinstance(args, str) else ' '.join(map(str, args)))\n"
            "    return real(self, args, *a, **k)\n"
            "subprocess.Popen.__init__ = spy\n"
            "from nsrun.linux import iptc\n"
            "iptc.load()\n"
            "print(started)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"loading python-iptables started: {r.stdout.strip()}"
