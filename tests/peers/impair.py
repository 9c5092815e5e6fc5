"""A user-space netem for tests/lossy.rs, for kernels without sch_netem.

`impair.py tun --dev NAME [--loss P] [--duplicate P] [--reorder P] [--hold-ms MS]
 [--seed N] [--lifetime S]` opens the TUN device NAME (IFF_TUN | IFF_NO_PI) in the
current network namespace, prints `tun NAME ready`, and then reads every IP packet the
kernel routes into it and writes it back, so that the kernel forwards it on. Until it gets
SIGUSR1 it passes every packet untouched (the test checks the path first); SIGUSR1 prints
`impairing after N packets` and from then on, for each IPv4 packet, with a seeded PRNG
(three draws a packet, whatever is decided, so that the decisions are a fixed sequence
for a given seed):

- with probability --loss it is dropped;
- else with probability --duplicate it is written twice;
- and with probability --reorder it is held back, and written right after the next packet
  of its flow (same addresses, protocol and ports): reordered; or, if none comes within
  --hold-ms, then: delayed.

Other packets (IPv6) are not forwarded. On SIGTERM or SIGINT (or after --lifetime seconds)
it prints `impair summary: in=.. dropped=.. duplicated=.. reordered=.. delayed=..
unimpaired=.. ignored=.. write_errors=..` and one `impair flow SRC>DST PROTO: ...` line for
each direction and protocol seen, and exits 0 (3 if the TUN device cannot be made).

`impair.py probe IP PORT` sends `probe` from a connected UDP socket to IP:PORT, where
nothing should listen, until the kernel reports the ICMP port unreachable that came back
(ECONNREFUSED): prints `probe refused after N tries` and exits 0, or exits 1 after 25
tries (5 s).
"""

import argparse
import fcntl
import os
import random
import select
import signal
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}
COUNTERS = ("in", "dropped", "duplicated", "reordered", "delayed")


class Stop(Exception):
    pass


def on_stop(_signum, _frame):
    raise Stop()


class Impairer:
    def __init__(self, fd, args):
        self.fd = fd
        self.args = args
        self.rng = random.Random(args.seed)
        self.impairing = False
        self.held = []  # [deadline, flow, direction, packet, copies]
        self.flows = {}  # direction -> counters
        self.total = dict.fromkeys(COUNTERS, 0)
        self.unimpaired = 0
        self.ignored = 0
        self.write_errors = 0

    def count(self, direction, what):
        self.total[what] += 1
        self.flows.setdefault(direction, dict.fromkeys(COUNTERS, 0))[what] += 1

    def write(self, packet, copies):
        for _ in range(copies):
            try:
                os.write(self.fd, packet)
            except OSError:
                self.write_errors += 1

    def on_usr1(self, _signum, _frame):
        if not self.impairing:
            self.impairing = True
            print(f"impairing after {self.unimpaired} packets", flush=True)

    def packet(self, packet):
        if len(packet) < 20 or packet[0] >> 4 != 4:
            self.ignored += 1
            return
        if not self.impairing:
            self.unimpaired += 1
            self.write(packet, 1)
            return
        ihl = (packet[0] & 0x0F) * 4
        proto = packet[9]
        src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
        direction = f"{src}>{dst} {PROTOCOLS.get(proto, str(proto))}"
        ports = packet[ihl : ihl + 4] if proto in (6, 17) else b""
        flow = (src, dst, proto, ports)
        self.count(direction, "in")
        loss, dup, reorder = self.rng.random(), self.rng.random(), self.rng.random()
        if loss < self.args.loss:
            self.count(direction, "dropped")
            return
        copies = 1
        if dup < self.args.duplicate:
            copies = 2
            self.count(direction, "duplicated")
        if reorder < self.args.reorder:
            deadline = time.monotonic() + self.args.hold_ms / 1000.0
            self.held.append([deadline, flow, direction, packet, copies])
            return
        self.write(packet, copies)
        # The packets of this flow held back before it now come after it.
        keep = []
        for h in self.held:
            if h[1] == flow:
                self.count(h[2], "reordered")
                self.write(h[3], h[4])
            else:
                keep.append(h)
        self.held = keep

    def release_due(self):
        now = time.monotonic()
        keep = []
        for h in self.held:
            if h[0] <= now:
                self.count(h[2], "delayed")
                self.write(h[3], h[4])
            else:
                keep.append(h)
        self.held = keep

    def run(self, lifetime):
        end = time.monotonic() + lifetime
        while time.monotonic() < end:
            timeout = 0.2
            if self.held:
                timeout = max(0.0, min(min(h[0] for h in self.held) - time.monotonic(), timeout))
            readable, _, _ = select.select([self.fd], [], [], timeout)
            if readable:
                self.packet(os.read(self.fd, 65536))
            self.release_due()

    def summary(self):
        t = self.total
        print(
            "impair summary: "
            + " ".join(f"{k}={t[k]}" for k in COUNTERS)
            + f" unimpaired={self.unimpaired} ignored={self.ignored}"
            + f" write_errors={self.write_errors}",
            flush=True,
        )
        for direction in sorted(self.flows):
            c = self.flows[direction]
            print(
                f"impair flow {direction}: " + " ".join(f"{k}={c[k]}" for k in COUNTERS),
                flush=True,
            )


def tun(args):
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        ifr = struct.pack("16sH22x", args.dev.encode(), IFF_TUN | IFF_NO_PI)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError as e:
        print(f"no tun: cannot make TUN device {args.dev}: {e}", flush=True)
        return 3
    impairer = Impairer(fd, args)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, impairer.on_usr1)
    print(f"tun {args.dev} ready", flush=True)
    try:
        impairer.run(args.lifetime)
    except Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        impairer.summary()
    return 0


def probe(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((args.ip, args.port))
    s.settimeout(0.2)
    for tries in range(1, 26):
        try:
            s.send(b"probe")
            s.recv(2048)
            print("probe answered: something listens there", flush=True)
            return 1
        except ConnectionRefusedError:
            print(f"probe refused after {tries} tries", flush=True)
            return 0
        except socket.timeout:
            pass
    print("probe: no answer after 25 tries", flush=True)
    return 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tun")
    t.add_argument("--dev", required=True)
    t.add_argument("--loss", type=float, default=0.0)
    t.add_argument("--duplicate", type=float, default=0.0)
    t.add_argument("--reorder", type=float, default=0.0)
    t.add_argument("--hold-ms", type=float, default=300.0)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--lifetime", type=float, default=120.0)
    p = sub.add_parser("probe")
    p.add_argument("ip")
    p.add_argument("port", type=int)
    args = parser.parse_args()
    return tun(args) if args.command == "tun" else probe(args)


if __name__ == "__main__":
    sys.exit(main())
