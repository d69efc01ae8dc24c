import os

if os.environ.get("NSRUN_FAULT_LINE", "").isdigit():  # the crash tests' kill at line N
    from nsrun import fault

    fault.trace_lines(int(os.environ["NSRUN_FAULT_LINE"]))
elif os.environ.get("NSRUN_FAULT_DISTINCT", "").isdigit():  # ... at the Nth distinct line
    from nsrun import fault

    fault.trace_distinct(int(os.environ["NSRUN_FAULT_DISTINCT"]), os.environ.get("NSRUN_FAULT_LOG"))

from nsrun.cli.main import main  # noqa: E402

raise SystemExit(main())
