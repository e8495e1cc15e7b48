#!/usr/bin/env python3
"""Writes the committed seed corpora, fuzz/corpus/<target>/, from fuzz/seeds/ (traffic
captured from real clients: Chromium 156 through playwright-core, Python websockets 17) and
from frames and commands built here. Each seed starts with the target's control byte (see
the comment at the top of each fuzz_targets/*.rs). Run it again after changing a layout:
    python3 fuzz/make_corpus.py
"""
import os
import random
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
CORPUS = os.path.join(HERE, "corpus")


def seed(name):
    with open(os.path.join(SEEDS, name), "rb") as f:
        return f.read()


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame(first, payload, mask=b"\x37\xfa\x21\x3d"):
    out = bytes([first])
    m = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        out += bytes([m | n])
    elif n < 65536:
        out += bytes([m | 126]) + struct.pack(">H", n)
    else:
        out += bytes([m | 127]) + struct.pack(">Q", n)
    if mask is not None:
        out += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return out + payload


def deflate(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    z = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert z.endswith(b"\x00\x00\xff\xff")
    return z[:-4]


# frame_reader: control byte = deflate (bit 0) | raw mode (bit 1 clear) | max_message
# (bits 2-3: 0, 125, 1024, 70000) | read boundaries (bits 4-7, two bytes each, at the end).
def ctl(deflate_on, max_sel, cuts=0):
    return bytes([(1 if deflate_on else 0) | (max_sel << 2) | (cuts << 4)])


FR = "frame_reader"
write(FR, "chromium156-frames", ctl(False, 2) + seed("chromium156-frames.bin"))
write(FR, "chromium156-frames-deflate", ctl(True, 2) + seed("chromium156-frames-deflate.bin"))
write(FR, "python-websockets17-frames", ctl(True, 2) + seed("python-websockets17-frames-deflate.bin"))
write(FR, "text-hello", ctl(False, 2) + frame(0x81, b"hello"))
write(FR, "binary-empty", ctl(False, 1) + frame(0x82, b""))
write(FR, "ping-pong-close", ctl(False, 1) + frame(0x89, b"ping") + frame(0x8A, b"") + frame(0x88, b"\x03\xe8bye"))
write(FR, "close-empty", ctl(False, 1) + frame(0x88, b""))
write(FR, "fragmented-with-ping", ctl(False, 2) + frame(0x01, b"hel") + frame(0x89, b"p") + frame(0x00, b"l") + frame(0x80, b"o"))
write(FR, "len16", ctl(False, 2) + frame(0x82, bytes(range(256)) * 2))
write(FR, "len64", ctl(False, 3) + frame(0x82, b"\xab" * 66000))
write(FR, "compressed-text", ctl(True, 2) + frame(0xC1, deflate(b"hello hello hello hello")))
write(FR, "compressed-fragmented", ctl(True, 2) + frame(0x41, deflate(b"abcabcabc")[:3]) + frame(0x80, deflate(b"abcabcabc")[3:]))
cut = frame(0x81, b"split across reads") + frame(0x82, b"\x00\x01")
write(FR, "two-frames-cut", ctl(False, 2, 3) + cut + struct.pack(">HHH", 1, 7, 21))
write(FR, "too-big", ctl(False, 1) + frame(0x82, b"x" * 126))
write(FR, "unmasked", ctl(False, 2) + frame(0x81, b"hi", mask=None))
write(FR, "msb-length", ctl(False, 2) + bytes([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]))
# Mode "frames" (bit 1): the bytes are frame descriptions for `arbitrary`.
rnd = random.Random(13)
for i in range(4):
    write(FR, f"structured-{i}", bytes([0x02 | (i & 1) | (2 << 2)]) + bytes(rnd.randrange(256) for _ in range(200)))

# handshake: control byte = deflate (bit 0) | structured (bit 1) | max_channels - 1 (bits 4-7).
HS = "handshake"
raw = bytes([0x31])
write(HS, "chromium156", raw + seed("chromium156-upgrade.http"))
write(HS, "chromium156-crier-v1-since", raw + seed("chromium156-upgrade-crier-v1.http"))
write(HS, "python-websockets17", raw + seed("python-websockets17-upgrade.http"))
write(HS, "chromium156-frames-behind", raw + seed("chromium156-upgrade.http") + frame(0x81, b"hi"))
write(HS, "crier-js", raw + b"GET /crier.js HTTP/1.1\r\nHost: x\r\n\r\n")
write(HS, "partial", raw + seed("chromium156-upgrade.http")[:200])
# Past MAX_HEAD_BYTES (8 KiB): 431. Also lifts libFuzzer's input length limit, which starts
# at the longest seed, above 8 KiB.
write(HS, "head-over-8k", raw + seed("chromium156-upgrade.http")[:-2] + b"Cookie: " + b"c" * 8300 + b"\r\n\r\n")
structured = [
    b"?channels=flights,gates\xffpermessage-deflate; client_max_window_bits\xffcrier.v1",
    b"?channels=a,b,c&since=1700000000:5,3,9&last=10\xffpermessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15\xffchat, crier.v1\xffX-Forwarded-For: 10.0.0.1",
    b"?channels=a%2Cb%3Ac&since=1:1,2:2\xffx-webkit-deflate-frame, permessage-deflate; client_max_window_bits=9\xffcrier.v1",
    b"?last=3&channels=*\xffpermessage-deflate; server_max_window_bits=10, permessage-deflate\xff\xffContent-Length: 0",
]
for i, s in enumerate(structured):
    write(HS, f"structured-{i}", bytes([0x33]) + s)

# publish_protocol: control byte = max_payload (bits 0-2: 0, 1, 16, 100, 1000, 70000, 5,
# 2048) | read boundaries (bits 3-7: one byte each at the end, scaled to the stream).
PP = "publish_protocol"
write(PP, "pub-text", bytes([4]) + b"PUB flights 5 text\r\nhello\r\n")
write(PP, "pub-binary-lf", bytes([4]) + b"PUB * 4 binary\n\x00\xff\r\n\n")
write(PP, "pipelined", bytes([4 | (3 << 3)]) + b"PING\r\nPUB gates 2\r\nB3\r\n\r\nPUB a:b.c-d_e 0 text\r\n\r\nping\n" + bytes([10, 100, 200]))
write(PP, "refusals", bytes([3]) + b"FOO bar\r\nPUB bad/name 2\r\nhi\r\nPUB a 2 jpeg\r\nhi\r\nPUB a 2 text\r\n\xff\xfe\r\nPUB a 101\r\n")
write(PP, "missing-crlf", bytes([3]) + b"PUB a 2\r\nhello\r\n")
write(PP, "line-too-long", bytes([3]) + b"PUB " + b"a" * 1100 + b" 1\r\nx\r\n")
payload = b"x" * 70000
write(PP, "pub-big", bytes([5]) + b"PUB big 70000 binary\r\n" + payload + b"\r\n")

# inflate: byte 0 = mode (0 raw, 1 bomb, 2 round trip), bytes 1-3 = cap.
IN = "inflate"
write(IN, "raw-hello", bytes([0, 0, 0x10, 0]) + deflate(b"hello hello hello hello"))
write(IN, "raw-chromium", bytes([0, 0, 0x10, 0]) + bytes.fromhex("f248cdc9c90700"))
write(IN, "raw-stored-final", bytes([0, 0, 0, 5]) + b"\x01\x05\x00\xfa\xffhello")
write(IN, "bomb-whole", bytes([1, 0, 0x40, 0]))
write(IN, "bomb-cut", bytes([1, 0x0f, 0xff, 0xff, 0, 0x20, 0]))
write(IN, "bomb-edited", bytes([1, 0x01, 0, 0, 0, 0x40, 0, 0, 10, 0x55]))
write(IN, "round-trip", bytes([2, 0, 0, 0]) + b'{"flight":"BA117","gate":"B32","status":"boarding"}' * 4)

# config: byte 0 = mode (0 the file, 1 one line for the size and duration parsers).
CF = "config"
write(CF, "sample", b"\x00" + seed("../../systemd/crier.toml"))
import re
every = re.sub(rb"(?m)^#([a-z-]+ = )", rb"\1", seed("../../systemd/crier.toml"))
write(CF, "sample-every-key", b"\x00" + every)
write(CF, "small", b"\x00" + b'ping-interval = "5s"\nmax-channels = 3\ndeflate = false\npath = "/live"\n')
write(CF, "numbers", b"\x00" + b"max-queue-bytes = 1048576\nbacklog = 128\nshards = 1\nlisten-shared = true\n")
write(CF, "bad-key", b"\x00" + b'ping-intervl = "5s"\n')
write(CF, "table", b"\x00" + b"[serve]\nlisten = \"127.0.0.1:1\"\n")
for i, line in enumerate([b"64KiB", b"1MiB", b"100", b" 3 gb ", b"18446744073709551615", b"500ms", b"1h 30m", b"2d", b"30s"]):
    write(CF, f"line-{i}", b"\x01" + line)
