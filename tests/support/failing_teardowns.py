"""`python failing_teardowns.py ARGS` is `python -m nsrun ARGS` whose nat-mode teardowns fail
at first: the test-only resource tests/support/failing_resource.py is added to nat mode, and
its first NSRUN_TEST_FAILING (default 1) removals raise. For the service's retry of a failed
teardown (tests/lab/test_service_under_attack.py)."""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import failing_resource

    from nsrun.engine import resources

    failing_resource.removals_to_fail = int(os.environ.get("NSRUN_TEST_FAILING", "1"))
    resources.MODES["nat"].append(failing_resource)  # type: ignore[arg-type]
    sys.argv[0] = "nsrun"
    runpy.run_module("nsrun", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
