"""Locust WebSocket subscribers for crier.

Each Locust user opens one WebSocket to crier and holds it, reporting to Locust:

  * request type ``WS``, name ``connect``: the upgrade (response time = connect time);
  * request type ``WS``, name ``message``: every message received (response time =
    delivery latency in ms, taken from the ``seq,unix_nanos,`` header that crier-load's
    publisher puts in each payload; 0 for payloads without it);
  * request type ``WS``, name ``gap`` (a failure): a jump in that header's sequence
    number, i.e. messages lost on this connection;
  * request type ``WS``, name ``closed`` (a failure): the server closed the connection.

Locust only subscribes; publish with crier-load (``-n 0`` = publish only) or anything else.

Install and run (crier on its defaults, 200 users, 50 new users/s, 60 s):

    pip install locust websocket-client
    locust -f loadtest/locustfile.py --headless -u 200 -r 50 -t 60s --host ws://127.0.0.1:8080

and, in a second terminal, publish 10 timestamped messages/s for a minute:

    cargo run --release -p crier-load -- -n 0 --rate 10 --duration 60s

Settings (environment variables):

    CRIER_PATH      WebSocket path (default /ws)
    CRIER_CHANNELS  comma-separated channels to subscribe to (default: only `*`)

Locust's own limit is the Python process: one process holds a few thousand idle users;
use ``--processes N`` for more, and crier-load for anything bigger.
"""

import os
import time

import websocket  # the websocket-client package
from locust import User, constant, events, task

PATH = os.environ.get("CRIER_PATH", "/ws")
CHANNELS = os.environ.get("CRIER_CHANNELS", "")

totals = {"messages": 0, "gaps": 0, "lost": 0, "closed": 0}


def parse_header(data):
    """Returns (seq, unix_nanos) from a crier-load payload, or None."""
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    parts = data[:48].split(b",", 2)
    if len(parts) < 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1])


class CrierSubscriber(User):
    """One WebSocket subscriber."""

    host = "ws://127.0.0.1:8080"
    wait_time = constant(1)  # only between reconnects

    def url(self):
        url = self.host.rstrip("/") + PATH
        if CHANNELS:
            url += ("&" if "?" in url else "?") + "channels=" + CHANNELS
        return url

    def fire(self, name, response_time, length=0, exception=None):
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exception,
            context={},
        )

    def on_stop(self):
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()

    @task
    def subscribe(self):
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(self.url(), timeout=10)
        except Exception as e:  # refused, 503, timeout, ...
            self.fire("connect", (time.perf_counter() - started) * 1000, exception=e)
            return
        self.fire("connect", (time.perf_counter() - started) * 1000)
        self.ws.settimeout(None)
        last_seq = None
        try:
            while True:
                # recv() answers the server's pings and returns text or bytes.
                data = self.ws.recv()
                now_ns = time.time_ns()
                header = parse_header(data)
                latency_ms = 0.0
                if header is not None:
                    seq, sent_ns = header
                    latency_ms = max(0.0, (now_ns - sent_ns) / 1e6)
                    if last_seq is not None and seq > last_seq + 1:
                        lost = seq - last_seq - 1
                        totals["gaps"] += 1
                        totals["lost"] += lost
                        self.fire("gap", 0, exception=Exception(f"{lost} messages lost"))
                    last_seq = seq if last_seq is None else max(seq, last_seq)
                totals["messages"] += 1
                self.fire("message", latency_ms, len(data))
        except websocket.WebSocketConnectionClosedException as e:
            totals["closed"] += 1
            self.fire("closed", 0, exception=e)
        finally:
            self.ws.close()
            self.ws = None


@events.test_stop.add_listener
def summary(environment, **_kwargs):
    print(
        "crier subscribers: {messages} messages, {lost} lost in {gaps} gaps, "
        "{closed} closed by the server".format(**totals)
    )
