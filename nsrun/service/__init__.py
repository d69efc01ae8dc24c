"""`nsrun daemon`: the warm service. It keeps the engine imported and brings namespaces up
for callers of `<state dir>/nsrun.sock` (nsrun.wire), so a run costs the work, not the
imports. See docs/service.md.

    daemon.py    main: the socket, warm imports, adoption, serve, stop
    listen.py    the socket: systemd's (activation) or made here
    server.py    the accept loop: a thread and one request per connection, dispatched
    callers.py   the caller (SO_PEERCRED), per-name locks, the output writer
    handlers.py  each request of a root caller
    userpath.py  callers without root: the policy (policy.py), CMD started as the caller
    runs.py      ephemeral namespaces watched until their program ends
    pool.py      namespaces wired before they are asked for

Stopping the service leaves running programs alone: their namespaces' records name their
processes, and the next service adopts them (runs.Runs.adopt), or `nsrun gc` reclaims
them once those processes are gone.
"""
