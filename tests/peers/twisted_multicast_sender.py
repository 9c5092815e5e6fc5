"""Twisted multicast sender: on its own port (listenMulticast(0)), sends b'Notify' to
GROUP:PORT via interface 127.0.0.1 and prints every reply; done at b'Acknowledge'.

usage: twisted_multicast_sender.py GROUP PORT
prints: TWISTED-SENT b'Notify' FROM PORT <port>, then TWISTED-GOT <repr> FROM <ip:port> per
datagram, then TWISTED-DONE
"""

import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

from twisted_peer import finish, run, say


class Sender(DatagramProtocol):
    def __init__(self, group, port):
        self.group, self.port = group, port

    def startProtocol(self):
        ready = self.transport.setOutgoingInterface("127.0.0.1")
        ready.addCallback(self.notify)
        ready.addErrback(lambda failure: finish(1, f"TWISTED-FAILED {failure.value!r}"))

    def notify(self, _):
        self.transport.write(b"Notify", (self.group, self.port))
        say(f"TWISTED-SENT b'Notify' FROM PORT {self.transport.getHost().port}")

    def datagramReceived(self, data, sender):
        say(f"TWISTED-GOT {data!r} FROM {sender[0]}:{sender[1]}")
        if data == b"Acknowledge":
            finish(0, "TWISTED-DONE")


group, port = sys.argv[1], int(sys.argv[2])
reactor.listenMulticast(0, Sender(group, port))
run("an Acknowledge")
