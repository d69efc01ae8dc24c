"""The lab tier (`pytest -m lab`): root, a real kernel, each test on a lab of namespaces of its
own (tests/conftest.py). A package, so that a subject's unit and lab modules may share a name.

Cleanup is asserted by the `lab` fixture, not by the tests: it snapshots the lab host (links,
addresses, routes, rules, firewalls, ip_forward, rp_filter, /run/netns, /etc/netns, state
files) before and after each test, and a difference fails the test at teardown, as an ERROR.
Many tests check their cleanup only that way (a leak found by the fixture alone is a failure
all the same), so no refactor may drop or narrow that snapshot. What it cannot see is a state
that is wrong in between and right again at the end (ip_forward put back while another
bridge still serves): a test asserts that while it happens.
"""
