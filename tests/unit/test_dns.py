"""Issue 12, points 4 and 5, without the lab: what a namespace's resolv.conf holds (the
host's search and options lines kept, a lone loopback stub forwarded), and the profile keys
`search` and `host_resolver`. DNS resolving and not leaking, in the lab: tests/lab/test_dns.py.
"""

from __future__ import annotations

import pytest

from nsrun import profile
from nsrun.engine.resources import dns

STUB = "127.0.0.53"
STUB_ONLY = "# the host's stub\nsearch lab.example\noptions edns0 timeout:2\nnameserver 127.0.0.53\n"


# -- what the resolv.conf holds ----------------------------------------------------------

REAL_PARSE = dns._parse


def _content(monkeypatch, tmp_path, host: str, fallback: str | None, *args, **kw):
    etc = tmp_path / "resolv.conf"
    etc.write_text(host)
    fb = tmp_path / "fallback.conf"
    if fallback is not None:
        fb.write_text(fallback)
    monkeypatch.setattr(dns, "_parse", lambda p: REAL_PARSE(str(etc) if p == "/etc/resolv.conf" else str(fb)))
    monkeypatch.setattr(dns, "STUB_FALLBACK", str(fb))
    return dns.content(*args, **kw), dns.stub()


def test_content_keeps_search_and_options_and_forwards_only_a_lone_stub(monkeypatch, tmp_path):
    (servers, other), stub = _content(monkeypatch, tmp_path, STUB_ONLY, None, None, None, "10.251.0.1")
    assert servers == ["10.251.0.1"] and stub == STUB
    assert other == ["search lab.example", "options edns0 timeout:2"]
    # resolved's real upstreams win over forwarding.
    (servers, other), stub = _content(monkeypatch, tmp_path, STUB_ONLY, "nameserver 192.0.2.1\n", None, None,
                                      "10.251.0.1")
    assert servers == ["192.0.2.1"] and stub is None
    # The profile's servers keep the host's lines; its search replaces the host's search/domain.
    (servers, other), _ = _content(monkeypatch, tmp_path, "domain a.example\noptions rotate\nnameserver 192.0.2.9\n",
                                   None, ["192.0.2.53"], ("b.example", "c.example"))
    assert servers == ["192.0.2.53"] and other == ["search b.example c.example", "options rotate"]
    (servers, other), _ = _content(monkeypatch, tmp_path, STUB_ONLY, None, ["192.0.2.53"], ())
    assert other == ["options edns0 timeout:2"]
    # An IPv6 loopback stub is not forwarded (the forward is IPv4).
    assert _content(monkeypatch, tmp_path, "nameserver ::1\n", None, None)[1] is None


NAT = 'mode = "nat"\nsubnet = "10.1.0.0/24"\n'


@pytest.mark.parametrize("text, reason", [
    ('search = "lab"', "must be a list of domains"),
    ('search = [1]', "must be a list of strings, not int"),
    ('search = ["a b"]', "'a b' is not a domain name"),
    ('search = [""]', "'' is not a domain name"),
    ('search = ["a..b"]', "is not a domain name"),
    ('search = ["-a.b"]', "is not a domain name"),
    ('search = ["a#b"]', "is not a domain name"),
    ('search = ["' + "x" * 64 + '"]', "is not a domain name"),
    ("search = [" + ", ".join(f'"d{i}"' for i in range(40)) + "]", "at most 32"),
    ("host_resolver = 1", "must be true or false, not int"),
])
def test_search_and_host_resolver_are_validated(text, reason):
    with pytest.raises(profile.ProfileError) as exc:
        profile.parse(NAT + text + "\n", "p.toml", "p")
    assert reason in str(exc.value) and "\n" not in str(exc.value)


def test_search_and_host_resolver_are_read():
    prof = profile.parse(NAT + 'search = ["lab.example", "corp."]\nhost_resolver = true\n', "p.toml", "p")
    assert prof.search == ("lab.example", "corp.") and prof.host_resolver
    assert prof.resolved()["search"] == ["lab.example", "corp."] and prof.resolved()["host_resolver"] is True
    plain = profile.parse(NAT, "p.toml", "p")
    assert plain.search is None and plain.host_resolver is False and "search" not in plain.resolved()
    assert profile.parse(NAT + "search = []\n", "p.toml", "p").search == ()
    with pytest.raises(profile.ProfileError):
        profile.parse('mode = "isolated"\nsearch = ["a"]\n', "p.toml", "p")
