"""Twisted echo client: sends each payload (hex on the command line; "" is the empty
datagram) to HOST:PORT from 127.0.0.1 in one burst and prints every reply; done when the
last payload comes back.

usage: twisted_echo_client.py HOST:PORT HEX...
prints: TWISTED-READY <ip:port>, then TWISTED-GOT len=<n> hex=<hex> FROM <ip:port> per
reply, then TWISTED-DONE
"""

import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

from twisted_peer import addr, finish, run, say


class EchoClient(DatagramProtocol):
    def __init__(self, server, payloads):
        self.server, self.payloads = server, payloads

    def startProtocol(self):
        here = self.transport.getHost()
        say(f"TWISTED-READY {here.host}:{here.port}")
        for payload in self.payloads:
            self.transport.write(payload, self.server)

    def datagramReceived(self, data, sender):
        say(f"TWISTED-GOT len={len(data)} hex={data.hex()} FROM {sender[0]}:{sender[1]}")
        if data == self.payloads[-1]:
            finish(0, "TWISTED-DONE")


payloads = [bytes.fromhex(h) for h in sys.argv[2:]]
reactor.listenUDP(0, EchoClient(addr(sys.argv[1]), payloads), interface="127.0.0.1")
run("the echo of the last payload")
