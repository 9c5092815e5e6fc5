"""Shared by the twisted_*.py peers: flushed output lines, one way to finish, and a
deadline so that no peer can hang: `run()` fails with TWISTED-TIMEOUT after 15 s."""

import sys

from twisted.internet import reactor

TIMEOUT = 15
_status = []


def say(line):
    print(line, flush=True)


def addr(host_port):
    """`(host, port)` from `HOST:PORT` on the command line."""
    host, port = host_port.rsplit(":", 1)
    return host, int(port)


def finish(code, line):
    """Prints `line` and stops the reactor (once), which then exits with `code`."""
    if _status:
        return
    _status.append(code)
    say(line)
    reactor.callWhenRunning(reactor.stop)


def run(waiting_for):
    """Runs the reactor until `finish`, or fails after TIMEOUT seconds."""
    reactor.callLater(
        TIMEOUT, finish, 1, f"TWISTED-TIMEOUT after {TIMEOUT} s waiting for {waiting_for}"
    )
    reactor.run()
    sys.exit(_status[0] if _status else 1)
