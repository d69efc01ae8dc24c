"""Every error nsrun can expect is an NsrunError: one line, its exit status, never
"internal error". A libnftables refusal, a foreign firewall's refusal, no usable backend
and firewalld's errors included."""

from __future__ import annotations

import pytest

from nsrun.cli import main
from nsrun.engine.firewall import detect, firewalld, foreign, nftables
from nsrun.errors import NsrunError
from support.requirements import requires


@pytest.mark.parametrize("error", [nftables.NftError, foreign.Refused, detect.NoBackend, firewalld.Unreachable,
                                   firewalld.Failed])
def test_the_firewall_errors_are_nsrun_errors(error: type[Exception]) -> None:
    assert issubclass(error, NsrunError)


def test_a_libnftables_refusal_is_one_line_naming_nftables_exit_1(monkeypatch, capsys) -> None:
    requires("libnftables")
    with pytest.raises(nftables.NftError) as info:
        nftables.run("add tabel ip nsrun-test-typo")  # a syntax error: refused before any change
    refusal = info.value

    def refused(inv: object) -> int:
        raise refusal

    monkeypatch.setitem(main.DISPATCH, "ls", refused)
    assert main.main(["ls"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nsrun: nftables: ") and err.count("\n") == 1, err
    assert "internal error" not in err
