"""Issue 10: the child -> supervisor pipe protocol (nsrun.process.report), written and read in
one module; no lab. The supervisor's signals, in the lab: tests/lab/test_signals.py."""

from __future__ import annotations

import os


def test_report_protocol_round_trip():
    """Issue 10: the pipe protocol is written and read in one module."""
    from nsrun.process import report

    def sent(*writes: tuple[str, tuple[object, ...]]) -> report.Report:
        r, w = os.pipe()
        for kind, args in writes:
            getattr(report, kind)(w, *args)
        os.close(w)
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
        os.close(r)
        return report.parse(data)

    ok = sent(("up", ("10.251.0.7",)))
    assert (ok.started, ok.address, ok.failure, ok.exec_failure, ok.cmd_ran) == (True, "10.251.0.7", None, None, True)
    missing = sent(("up", (None,)), ("exec_failed", (127, "nope: not found")))
    assert (missing.cmd_ran, missing.exec_failure) == (False, (127, "nope: not found"))
    failed = sent(("error", (2, "bad\nprofile: two lines")))
    assert (failed.started, failed.failure) == (False, (2, "bad profile: two lines"))
    assert not report.parse(b"").started
