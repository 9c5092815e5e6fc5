"""Twisted's own UDP echo server, for `cargo bench --bench echo`.

Usage: python twisted_echo.py [CPU]

Pins itself to CPU when given, listens on 127.0.0.1 on a free port, prints that port
(one line, flushed) and echoes every datagram until its stdin closes or it is killed.
"""

import os
import sys

from twisted.internet import reactor, stdio
from twisted.internet.protocol import DatagramProtocol, Protocol


class Echo(DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(data, addr)


class StopOnEof(Protocol):
    """The benchmark closes our stdin to stop us."""

    def connectionLost(self, reason):
        if reactor.running:
            reactor.stop()


def main():
    if len(sys.argv) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(sys.argv[1])})
    port = reactor.listenUDP(0, Echo(), interface="127.0.0.1")
    stdio.StandardIO(StopOnEof())
    print(port.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
