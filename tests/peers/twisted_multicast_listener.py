"""Twisted multicast listener: listenMulticast(PORT, listenMultiple=True), joins GROUP via
127.0.0.1 and prints every datagram; done at the first b'Notify'.

usage: twisted_multicast_listener.py GROUP PORT
prints: TWISTED-JOINED <group>:<port> once the join's Deferred fired, then
TWISTED-GOT <repr> FROM <ip:port> per datagram, then TWISTED-DONE
"""

import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

from twisted_peer import finish, run, say


class Listener(DatagramProtocol):
    def __init__(self, group, port):
        self.group, self.port = group, port

    def startProtocol(self):
        joined = self.transport.joinGroup(self.group, "127.0.0.1")
        joined.addCallbacks(
            lambda _: say(f"TWISTED-JOINED {self.group}:{self.port}"),
            lambda failure: finish(1, f"TWISTED-JOIN-FAILED {failure.value!r}"),
        )

    def datagramReceived(self, data, sender):
        say(f"TWISTED-GOT {data!r} FROM {sender[0]}:{sender[1]}")
        if data == b"Notify":
            finish(0, "TWISTED-DONE")


group, port = sys.argv[1], int(sys.argv[2])
reactor.listenMulticast(port, Listener(group, port), listenMultiple=True)
run("a Notify")
