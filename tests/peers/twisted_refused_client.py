"""Twisted connected-UDP client against a closed port: connect()s to HOST:PORT, writes,
and waits for connectionRefused.

With the default epoll reactor Twisted does not call connectionRefused from the read
path: the ICMP error shows as EPOLLERR, which the reactor treats as a disconnect and
silently shuts the port (twisted/twisted#5377). It does call it synchronously from
write() when a later send() fails with the pending ECONNREFUSED, so this peer writes
several times in a row within one callback, as Twisted's own test_connectionRefused
does (on loopback the refusal of the first write is pending by the second).

usage: twisted_refused_client.py HOST:PORT
prints: TWISTED-REACTOR <class>, TWISTED-REFUSED during write <n> (or outside write),
then TWISTED-DONE; TWISTED-PORT-LOST if the port was shut without connectionRefused
"""

import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

from twisted_peer import addr, finish, run, say

WRITES = 10


class RefusedClient(DatagramProtocol):
    refused = False
    writing = None

    def __init__(self, server):
        self.server = server

    def startProtocol(self):
        self.transport.connect(*self.server)
        for n in range(1, WRITES + 1):
            self.writing = n
            self.transport.write(b"ping %d" % n)
            if self.refused:
                break
        self.writing = None

    def connectionRefused(self):
        self.refused = True
        where = f"during write {self.writing}" if self.writing else "outside write"
        say(f"TWISTED-REFUSED {where}")
        finish(0, "TWISTED-DONE")

    def stopProtocol(self):
        if not self.refused:
            finish(1, "TWISTED-PORT-LOST without connectionRefused")


say(f"TWISTED-REACTOR {type(reactor).__name__}")
reactor.listenUDP(0, RefusedClient(addr(sys.argv[1])), interface="127.0.0.1")
run("connectionRefused")
