"""A UDP client made of nothing but Python's own `socket` module, driven by steps on the
command line, for twine's interoperability tests.

    socket_client.py SERVER STEP...

SERVER is IP:PORT or [IPv6]:PORT. Each STEP is `[N:]VERB[:ARG]`, N the client socket
(default 0; sockets are made on first use, bound to the loopback address of SERVER's
family, port 0):

    send:text:STR     send STR (UTF-8)          send:empty       the empty datagram
    send:fill:LEN:B   LEN bytes of value B      recv             one datagram, printed
    until:PREFIX      datagrams, each printed, until one starts with PREFIX (UTF-8)
    ctime             one datagram, parsed as a ctime string by time.strptime
    say:TEXT          print TEXT (a marker the test waits for)

Prints `ADDR N IP:PORT` for each socket, `RECV N len=L from=IP:PORT hex=HEX` for each
datagram, `CTIME N epoch=E now=E`, then `DONE`. Any failure (a 5 s wait for any datagram
included) prints `FAIL ...` and exits 1.
"""
import calendar
import socket
import sys
import time


def parse_addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv):
    server = parse_addr(argv[0])
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    socks = {}

    def sock(n):
        if n not in socks:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.bind((loopback, 0))
            socks[n] = s
            print(f"ADDR {n} {fmt(s.getsockname())}")
        return socks[n]

    def fmt(addr):
        return f"[{addr[0]}]:{addr[1]}" if family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}"

    for step in argv[1:]:
        head, _, rest = step.partition(":")
        n = 0
        if head.isdigit():
            n, (head, _, rest) = int(head), rest.partition(":")
        s = sock(n)
        if head == "send":
            kind, _, arg = rest.partition(":")
            if kind == "text":
                data = arg.encode()
            elif kind == "empty":
                data = b""
            elif kind == "fill":
                length, _, byte = arg.partition(":")
                data = bytes([int(byte)]) * int(length)
            else:
                raise ValueError(f"bad send step {step!r}")
            s.sendto(data, server)
        elif head in ("recv", "until"):
            deadline = time.monotonic() + 5.0
            while True:
                s.settimeout(max(deadline - time.monotonic(), 0.001))
                data, addr = s.recvfrom(65536)
                print(f"RECV {n} len={len(data)} from={fmt(addr)} hex={data.hex()}")
                if head == "recv" or data.startswith(rest.encode()):
                    break
        elif head == "ctime":
            s.settimeout(5.0)
            data, addr = s.recvfrom(65536)
            parsed = time.strptime(data.decode(), "%a %b %d %H:%M:%S %Y")
            print(f"CTIME {n} epoch={calendar.timegm(parsed)} now={int(time.time())}")
        elif head == "say":
            print(rest)
        else:
            raise ValueError(f"bad step {step!r}")
    print("DONE")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Exception as e:  # the test shows it and fails
        print(f"FAIL {type(e).__name__}: {e}")
        sys.exit(1)
