"""A stand-in DNS server over UDP, made of Python 3's standard library only, for twine's
dns_client example and its tests.

    dns_standin.py [--host IP] [--port N] [--name NAME] [--address IPV4] [--drop N] [--junk]

Answers A queries (class IN) for NAME (default example.test, any case) with one A record,
IPV4 (default 127.0.0.7); other types for NAME get an empty NOERROR answer, other names
NXDOMAIN. The first N copies (--drop, default 0) of each query (per client address and
query id) are ignored, as a lossy network would lose them. With --junk, each answer is
preceded by datagrams that carry the query's id but are no answer to it: a short one, one
whose answer points past the end, one with a compression loop, one with too many answers
for its length, and one for another question, all from the server's own address.

Prints `listening on IP:PORT` once bound, then a line per datagram: `dropped try K of
query ID`, `answered try K of query ID`, `ignored ...`. Runs until killed.
"""
import argparse
import socket
import struct
import sys


def read_qname(data, pos):
    """The question's name (no compression in queries) and where it ends, or None."""
    labels = []
    while True:
        if pos >= len(data):
            return None, pos
        n = data[pos]
        if n == 0:
            return ".".join(labels), pos + 1
        if n & 0xC0 or pos + 1 + n > len(data):
            return None, pos
        labels.append(data[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n


def encode_name(name):
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


def junk(qid, question):
    """Datagrams with the query's id that are not an answer to it."""
    head = lambda an: struct.pack("!6H", qid, 0x8180, 1, an, 0, 0)
    record = lambda name: name + struct.pack("!HHIH", 1, 1, 60, 4)
    return [
        struct.pack("!H", qid) + b"\x81",
        head(1) + question + record(b"\xc0\xff") + socket.inet_aton("127.0.0.66"),
        head(1) + question + record(b"\xc0" + bytes([12 + len(question)]))
        + socket.inet_aton("127.0.0.66"),
        head(5) + question + record(b"\xc0\x0c") + socket.inet_aton("127.0.0.66"),
        head(1) + encode_name("evil.test") + b"\x00\x01\x00\x01"
        + record(b"\xc0\x0c") + socket.inet_aton("127.0.0.66"),
    ]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9953)
    p.add_argument("--name", default="example.test")
    p.add_argument("--address", default="127.0.0.7")
    p.add_argument("--drop", type=int, default=0)
    p.add_argument("--junk", action="store_true")
    args = p.parse_args(argv)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"listening on {shown}:{port}", flush=True)
    seen = {}
    ours = args.name.strip(".").lower()
    while True:
        data, peer = sock.recvfrom(65535)
        if len(data) < 12:
            print(f"ignored a {len(data)}-byte datagram", flush=True)
            continue
        qid, flags, qd, _an, _ns, _ar = struct.unpack("!6H", data[:12])
        name, end = read_qname(data, 12)
        if flags & 0x8000 or qd != 1 or name is None or end + 4 > len(data):
            print(f"ignored a malformed query {qid}", flush=True)
            continue
        qtype, qclass = struct.unpack("!HH", data[end : end + 4])
        question = data[12 : end + 4]
        tries = seen[(peer, qid)] = seen.get((peer, qid), 0) + 1
        if tries <= args.drop:
            print(f"dropped try {tries} of query {qid}", flush=True)
            continue
        if args.junk:
            for j in junk(qid, question):
                sock.sendto(j, peer)
        rcode, answers, count = 0, b"", 0
        if name.lower() != ours:
            rcode = 3
        elif qtype == 1 and qclass == 1:
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4)
            answers += socket.inet_aton(args.address)
            count = 1
        reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
        reply = struct.pack("!6H", qid, reply_flags, 1, count, 0, 0) + question + answers
        sock.sendto(reply, peer)
        print(f"answered try {tries} of query {qid}", flush=True)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        pass
