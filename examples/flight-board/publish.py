#!/usr/bin/env python3
"""The flight board's publisher: every --interval seconds, one flight changes (boarding,
a delay, a gate change, departure, ...) and the whole board goes to crier's channel
`flights` as one JSON message over the publisher Unix socket (README, "Publishers"):

    PUB flights <nbytes> text\\r\\n<payload>\\r\\n   ->   +OK <seq>\\r\\n

The board is small (a dozen rows), so each message carries all of it: a page that opens
gets the current board from `last=1` and needs no other API. Python 3 standard library
only. Reconnects when crier restarts. Prints one line per publish.

    publish.py --socket /run/crier/publish.sock [--interval 1.0] [--count N] [--seed S]
"""

import argparse
import datetime
import json
import random
import socket
import sys
import time

DESTINATIONS = [
    "London Heathrow", "Frankfurt", "Paris CDG", "Amsterdam", "Dubai", "New York JFK",
    "Madrid", "Rome Fiumicino", "Zurich", "Vienna", "Lisbon", "Copenhagen", "Oslo",
    "Istanbul", "Singapore", "Tokyo Haneda", "Toronto", "Dublin", "Athens", "Helsinki",
]
AIRLINES = ["BA", "LH", "AF", "KL", "EK", "IB", "AZ", "LX", "OS", "TP", "SK", "TK", "SQ"]
# The way through the day of a flight that goes well.
PROGRESS = ["Scheduled", "On time", "Boarding", "Final call", "Gate closed", "Departed"]
ROWS = 12


def now():
    """Local time, with its offset: the page shows departures and updates in its own."""
    return datetime.datetime.now().astimezone()


class Board:
    def __init__(self, rng):
        self.rng = rng
        self.clock = now().replace(second=0, microsecond=0)
        self.flights = []
        for i in range(ROWS):
            self.flights.append(self.new_flight(10 + 7 * i))

    def new_flight(self, minutes_from_now):
        departs = self.clock + datetime.timedelta(minutes=minutes_from_now)
        taken = {f["flight"] for f in self.flights}
        number = None
        while number is None or number in taken:
            number = f"{self.rng.choice(AIRLINES)}{self.rng.randint(10, 999)}"
        return {
            "flight": number,
            "destination": self.rng.choice(DESTINATIONS),
            "gate": f"{self.rng.choice('ABC')}{self.rng.randint(1, 40)}",
            "status": "Scheduled",
            "departs": departs.strftime("%H:%M"),
            "updated": now().isoformat(timespec="seconds"),
        }

    def step(self):
        """Changes one flight; returns its flight number."""
        i = self.rng.randrange(len(self.flights))
        f = self.flights[i]
        if f["status"] in ("Departed", "Cancelled"):
            # It leaves the board; a later flight takes the last row.
            del self.flights[i]
            last = max(self.flights, key=lambda x: x["departs"])["departs"]
            h, m = map(int, last.split(":"))
            gap = (h * 60 + m + 7 - (self.clock.hour * 60 + self.clock.minute)) % (24 * 60)
            f = self.new_flight(gap)
            self.flights.append(f)
            return f["flight"]
        roll = self.rng.random()
        if roll < 0.15 and f["status"] not in ("Gate closed",):
            f["gate"] = f"{self.rng.choice('ABC')}{self.rng.randint(1, 40)}"
            f["status"] = "Gate change"
        elif roll < 0.3 and f["status"] in ("Scheduled", "On time", "Gate change"):
            f["status"] = f"Delayed {self.rng.choice([10, 15, 20, 30, 45])} min"
        elif roll < 0.32:
            f["status"] = "Cancelled"
        else:
            try:
                nxt = PROGRESS.index(f["status"]) + 1
            except ValueError:  # delayed or gate change: back on the way
                nxt = 2
            f["status"] = PROGRESS[min(nxt, len(PROGRESS) - 1)]
        f["updated"] = now().isoformat(timespec="seconds")
        return f["flight"]

    def message(self, changed):
        return {"changed": changed, "flights": self.flights}


class Publisher:
    def __init__(self, path):
        self.path = path
        self.sock = None
        self.buf = b""

    def publish(self, channel, payload):
        """Returns the message's sequence number, reconnecting until crier takes it."""
        frame = b"PUB %s %d text\r\n%s\r\n" % (channel.encode(), len(payload), payload)
        delay = 0.2
        while True:
            try:
                if self.sock is None:
                    self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self.sock.settimeout(10)
                    self.sock.connect(self.path)
                    self.buf = b""
                self.sock.sendall(frame)
                while b"\n" not in self.buf:
                    chunk = self.sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("crier closed the publisher socket")
                    self.buf += chunk
                line, self.buf = self.buf.split(b"\n", 1)
                line = line.decode().strip()
                if line.startswith("+OK "):
                    return int(line[4:])
                sys.exit(f"publish.py: crier refused the message: {line}")
            except OSError as e:
                print(f"publish.py: {self.path}: {e}; retrying in {delay:.1f}s", file=sys.stderr, flush=True)
                if self.sock is not None:
                    self.sock.close()
                self.sock = None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", required=True, help="crier's --publish-socket")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between updates (default 1)")
    ap.add_argument("--count", type=int, default=0, help="stop after this many updates (default: never)")
    ap.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable board")
    ap.add_argument("--channel", default="flights", help="crier channel (default flights)")
    args = ap.parse_args()

    board = Board(random.Random(args.seed))
    pub = Publisher(args.socket)
    sent = 0
    changed = board.flights[0]["flight"]
    while True:
        payload = json.dumps(board.message(changed), separators=(",", ":")).encode()
        seq = pub.publish(args.channel, payload)
        row = next(f for f in board.flights if f["flight"] == changed)
        print(f"#{seq} {changed} {row['destination']} gate {row['gate']}: {row['status']}", flush=True)
        sent += 1
        if args.count and sent >= args.count:
            return
        time.sleep(args.interval)
        changed = board.step()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
