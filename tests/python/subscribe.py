#!/usr/bin/env python3
"""Subscribe to crier with the Python `websockets` library, compression on.

Usage: subscribe.py URL N

Prints, one per line, flushed as they happen:
  EXTENSIONS <Sec-WebSocket-Extensions response header, or "-">
  NEGOTIATED <names of the negotiated extension objects, comma-separated, or "-">
  TEXT <hex of the UTF-8 bytes>     (one per received text message)
  BINARY <hex>                      (one per received binary message)
  DONE <close code>
Exits 0 after N messages and a clean close, 2 on a usage error, 1 on anything else.
"""

import asyncio
import sys

import websockets


def response_header(ws, name):
    response = getattr(ws, "response", None)  # websockets >= 13 (new asyncio API)
    headers = getattr(response, "headers", None)
    if headers is None:
        headers = getattr(ws, "response_headers", None)  # legacy API
    if headers is None:
        return None
    return headers.get(name)


def negotiated(ws):
    protocol = getattr(ws, "protocol", None)
    extensions = getattr(protocol, "extensions", None)
    if extensions is None:
        extensions = getattr(ws, "extensions", [])
    return [str(getattr(e, "name", e)) for e in extensions]


async def main(url, n):
    async with websockets.connect(
        url,
        compression="deflate",
        open_timeout=10,
        close_timeout=5,
        ping_interval=None,
        max_size=16 * 1024 * 1024,
    ) as ws:
        print("EXTENSIONS", response_header(ws, "Sec-WebSocket-Extensions") or "-", flush=True)
        print("NEGOTIATED", ",".join(negotiated(ws)) or "-", flush=True)
        for _ in range(n):
            msg = await asyncio.wait_for(ws.recv(), timeout=20)
            if isinstance(msg, str):
                print("TEXT", msg.encode("utf-8").hex(), flush=True)
            else:
                print("BINARY", bytes(msg).hex(), flush=True)
        await ws.close()
        print("DONE", ws.close_code, flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    except Exception as e:  # report, then fail
        print(f"ERROR {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
