"""The package type-checks (mypy, the configuration in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys


from conftest import REPO
from support.requirements import requires


def test_mypy_is_clean():
    requires("mypy")
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
