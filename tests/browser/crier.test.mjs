// Unit tests of clients/js/crier.js with a scripted WebSocket (node --test; run by
// tests/browser.rs). The real browser and server are exercised by tests/browser.rs itself.

import { test } from "node:test";
import assert from "node:assert/strict";
import { CrierClient, SUBPROTOCOL } from "../../clients/js/crier.js";

/** A WebSocket stand-in: records what was opened; the test drives its events. */
class FakeSocket {
  static all = [];
  constructor(url, protocol) {
    this.url = url;
    this.requested = protocol;
    this.protocol = "";
    this.readyState = 0;
    this.closedWith = null;
    FakeSocket.all.push(this);
  }
  open(protocol = SUBPROTOCOL) {
    this.protocol = protocol;
    this.readyState = 1;
    this.onopen?.({});
  }
  frame(data) {
    this.onmessage?.({ data });
  }
  binary(header, bytes) {
    const h = new TextEncoder().encode(header);
    const u = new Uint8Array(h.length + bytes.length);
    u.set(h);
    u.set(bytes, h.length);
    this.frame(u.buffer);
  }
  serverClose(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "", wasClean: code !== 1006 });
  }
  close(code) {
    this.closedWith = code ?? null;
    this.serverClose(code ?? 1005);
  }
}

function client(options = {}) {
  FakeSocket.all = [];
  const events = [];
  const c = new CrierClient("http://h:8080/ws?x=1", {
    WebSocket: FakeSocket,
    backoffBaseMs: 1,
    backoffCapMs: 4,
    ...options,
  });
  for (const t of ["message", "gap", "reset", "open", "close", "error"]) {
    c.addEventListener(t, (e) => events.push([t, e.detail]));
  }
  return { c, events, sock: () => FakeSocket.all[FakeSocket.all.length - 1] };
}

const tick = (ms) => new Promise((r) => setTimeout(r, ms));
const kinds = (events, t) => events.filter(([k]) => k === t).map(([, d]) => d);

test("first connection: crier.v1, channels and last in the URL", () => {
  const { c, sock } = client({ channels: ["a", "b", "a"], last: 5 });
  assert.equal(sock().url, "ws://h:8080/ws?channels=a,b&last=5");
  assert.equal(sock().requested, "crier.v1");
  c.close();
});

test("envelopes: text, binary with 0x0A in the payload, duplicates dropped", () => {
  const { c, events, sock } = client({ channels: ["a", "b"] });
  sock().open();
  sock().frame("m a 1 1700000000000123456\nhello\nworld");
  sock().binary("m b 1 1700000000000123456\n", new Uint8Array([0x0a, 0xff, 0x0a]));
  sock().frame("m a 1 1700000000000123456\nhello again"); // duplicate: dropped
  sock().frame("m a 2 1700000000000123456\n");
  const msgs = kinds(events, "message");
  assert.equal(msgs.length, 3);
  assert.deepEqual(
    [msgs[0].channel, msgs[0].seq, msgs[0].epoch, msgs[0].data, msgs[0].binary],
    ["a", 1, "1700000000000123456", "hello\nworld", false],
  );
  assert.equal(msgs[1].binary, true);
  assert.deepEqual([...msgs[1].data], [0x0a, 0xff, 0x0a]);
  assert.equal(msgs[2].data, "");
  assert.equal(c.lastSeq("a"), 2);
  c.close();
});

test("resume URL: since=<epoch>:<seqs> in the channels' order, unseen channels at 0", async () => {
  const { c, events, sock } = client({ channels: ["b", "a", "c"], last: 3 });
  sock().open();
  sock().frame("m a 7 42\nx");
  sock().frame("m b 3 42\ny");
  sock().serverClose(1006);
  const closes = kinds(events, "close");
  assert.equal(closes.length, 1);
  assert.ok(closes[0].reconnectInMs >= 0 && closes[0].reconnectInMs < 1);
  await tick(20);
  assert.equal(sock().url, "ws://h:8080/ws?channels=b,a,c&since=42:3,7,0");
  sock().open();
  assert.equal(kinds(events, "open")[1].resumed, true);
  c.close();
});

test("gap notice: reported once and moves the position past it", async () => {
  const { c, events, sock } = client({ channels: ["a"] });
  sock().open();
  sock().frame("m a 2 9\nx");
  sock().serverClose();
  await tick(20);
  sock().open();
  sock().frame("gap a 3 7 9\n");
  sock().frame("m a 8 9\ny");
  assert.deepEqual(kinds(events, "gap"), [{ channel: "a", from: 3, to: 7, epoch: "9" }]);
  assert.deepEqual(kinds(events, "message").map((m) => m.seq), [2, 8]);
  sock().serverClose();
  await tick(20);
  assert.match(sock().url, /since=9:8$/);
  c.close();
});

test("reset notice: new epoch, sequence starts afresh", async () => {
  const { c, events, sock } = client({ channels: ["a", "b"] });
  sock().open();
  sock().frame("m a 50 1\nold");
  sock().frame("m b 5 1\nold");
  sock().serverClose(1001);
  await tick(20);
  assert.match(sock().url, /since=1:50,5$/);
  sock().open();
  sock().frame("reset a 2\n");
  sock().frame("m a 1 2\nnew");
  // The connection drops before b's reset: b is resumed from its position in the old
  // epoch (the server answers that with a reset), and if its first message in the new
  // epoch comes without one, that is reported as a reset too.
  sock().serverClose();
  await tick(20);
  assert.match(sock().url, /since=2:1,1:5$/);
  sock().open();
  sock().frame("m b 1 2\nnew b");
  assert.deepEqual(kinds(events, "reset"), [
    { channel: "a", epoch: "2" },
    { channel: "b", epoch: "2" },
  ]);
  assert.deepEqual(kinds(events, "message").map((m) => `${m.channel}${m.seq}@${m.epoch}`), [
    "a50@1",
    "b5@1",
    "a1@2",
    "b1@2",
  ]);
  c.close();
});

test("backoff: full jitter under a doubling bound, capped, reset after a stable connection", async () => {
  const { c, events, sock } = client({ channels: ["a"], backoffBaseMs: 100, backoffCapMs: 1000, stableMs: 30 });
  const delays = [];
  for (let i = 0; i < 6; i++) {
    sock().serverClose();
    const d = kinds(events, "close").at(-1).reconnectInMs;
    delays.push(d);
    assert.ok(d >= 0 && d < Math.min(1000, 100 * 2 ** i), `attempt ${i}: ${d} ms`);
    c.connect(); // skip the wait
  }
  sock().open();
  await tick(40);
  sock().serverClose();
  assert.ok(kinds(events, "close").at(-1).reconnectInMs < 100, "a stable connection resets the backoff");
  c.close();
});

test("close() stops reconnecting; dropConnection() keeps the network down as asked", async () => {
  const { c, events, sock } = client({ channels: ["a"] });
  sock().open();
  c.dropConnection(50);
  const d = kinds(events, "close").at(-1).reconnectInMs;
  assert.ok(d >= 49, `dropConnection(50) reconnects after ${d} ms`);
  c.close();
  assert.equal(kinds(events, "close").length, 1);
  const n = FakeSocket.all.length;
  await tick(80);
  assert.equal(FakeSocket.all.length, n, "no reconnection after close()");
  c.connect();
  sock().open();
  sock().frame("m a 1 1\nx");
  c.close();
  assert.equal(sock().closedWith, 1000);
  assert.equal(kinds(events, "close").at(-1).reconnectInMs, null);
});

test("no crier.v1 from the server: bare payloads; malformed headers are errors", () => {
  const { c, events, sock } = client({ channels: ["a"] });
  sock().open("");
  sock().frame("just a payload");
  assert.deepEqual(kinds(events, "message")[0], { channel: null, seq: null, epoch: null, data: "just a payload", binary: false });
  const { c: c2, events: e2, sock: s2 } = client({ channels: ["a"] });
  s2().open();
  s2().frame("m a x 1\npayload");
  s2().frame("no newline");
  s2().frame("later-notice a 1\n"); // unknown notices of later revisions are skipped
  assert.equal(kinds(e2, "message").length, 0);
  assert.equal(kinds(e2, "error").length, 2);
  c.close();
  c2.close();
});

test("cluster mode: channels in different epochs resume with one <epoch>:<seq> each", async () => {
  const { c, events, sock } = client({ channels: ["a", "b", "c"] });
  sock().open();
  sock().frame("m a 4 100\nx");
  sock().frame("m b 9 200\ny"); // another epoch on the same connection: per-channel epochs
  sock().serverClose(1006);
  await tick(20);
  assert.equal(sock().url, "ws://h:8080/ws?channels=a,b,c&since=100:4,200:9,0");
  sock().open();
  sock().frame("m a 5 100\nz");
  assert.deepEqual(kinds(events, "reset"), [], "different epochs per channel are not resets");
  assert.deepEqual(kinds(events, "message").map((m) => m.seq), [4, 9, 5]);
  c.close();
});

test("token: a string goes in the URL, encoded", () => {
  const { c, sock } = client({ channels: ["a"], token: "x.y+z/=" });
  assert.equal(sock().url, "ws://h:8080/ws?channels=a&token=x.y%2Bz%2F%3D");
  c.close();
});

test("token: a function is asked before every connection; 4001 comes back at once and resumes", async () => {
  let asked = 0;
  const { c, events, sock } = client({
    channels: ["a"],
    backoffBaseMs: 10000,
    backoffCapMs: 10000,
    token: async () => {
      asked += 1;
      await tick(1);
      return `t${asked}`;
    },
  });
  assert.equal(FakeSocket.all.length, 0, "no socket before the token is there");
  await tick(10);
  assert.equal(sock().url, "ws://h:8080/ws?channels=a&token=t1");
  sock().open();
  sock().frame("m a 7 1700\nseven");
  sock().serverClose(4001);
  const close = kinds(events, "close")[0];
  assert.equal(close.code, 4001);
  assert.equal(close.reconnectInMs, 0, "a token expiry is not a failure: no backoff");
  await tick(20);
  assert.equal(asked, 2);
  assert.equal(sock().url, "ws://h:8080/ws?channels=a&token=t2&since=1700:7");
  c.close();
});

test("token: a function that fails is an error, and the backoff applies", async () => {
  const { c, events } = client({
    channels: ["a"],
    token: () => Promise.reject(new Error("backend down")),
  });
  await tick(5);
  assert.equal(FakeSocket.all.length, 0);
  const err = kinds(events, "error")[0];
  assert.match(err.message, /token: Error: backend down/);
  c.close();
  const n = kinds(events, "error").length;
  await tick(20);
  assert.equal(kinds(events, "error").length, n, "close() stops the attempts");
});

test("cluster mode: lastSeq and position are per channel, whatever epoch came last", () => {
  const { c, sock } = client({ channels: ["a", "b"] });
  sock().open();
  sock().frame("m a 4 100\nx");
  sock().frame("m b 9 200\ny");
  assert.equal(c.lastSeq("a"), 4);
  assert.deepEqual(c.position("a"), { epoch: "100", seq: 4 });
  assert.deepEqual(c.position("b"), { epoch: "200", seq: 9 });
  assert.equal(c.position("z"), null);
  c.close();
});

test("a reconnection before any message resumes from 0, so what was published meanwhile comes", async () => {
  const { c, events, sock } = client({ channels: ["a", "b"], last: 5 });
  sock().open();
  sock().serverClose(1006); // the node died before anything was published
  await tick(20);
  assert.equal(sock().url, "ws://h:8080/ws?channels=a,b&since=0:0,0", "a resume, not a fresh last=5");
  sock().open();
  assert.equal(kinds(events, "open")[1].resumed, true);
  // The server knows a's epoch (cluster mode: Redis's) and answers the guessed 0 with a
  // reset and all it holds; b was never published (cluster mode: epoch 0, no notice).
  sock().frame("reset a 77\n");
  sock().frame("m a 1 77\nfirst");
  sock().frame("m a 2 77\nsecond");
  assert.deepEqual(kinds(events, "reset"), [], "nothing to reset: no position was known");
  assert.deepEqual(kinds(events, "message").map((m) => `${m.seq}@${m.epoch}`), ["1@77", "2@77"]);
  sock().serverClose(1006);
  await tick(20);
  assert.equal(sock().url, "ws://h:8080/ws?channels=a,b&since=77:2,0");
  c.close();
});

test("a connection that never opened: the retry is a fresh subscription", async () => {
  const { c, sock } = client({ channels: ["a"], last: 3 });
  sock().serverClose(1006); // refused before the upgrade
  await tick(20);
  assert.equal(sock().url, "ws://h:8080/ws?channels=a&last=3");
  c.close();
});

test("a reset names epoch 0 (no state anywhere): reported once, then the new epoch is no second reset", async () => {
  const { c, events, sock } = client({ channels: ["a", "b"] });
  sock().open();
  sock().frame("m a 5 100\nx");
  sock().frame("m b 3 200\ny");
  sock().serverClose(1006);
  await tick(20);
  sock().open();
  sock().frame("reset a 0\n"); // the node and Redis know nothing of a any more
  sock().frame("m a 1 300\nfresh"); // then a is published again: a new epoch
  sock().frame("reset b 400\n");
  sock().frame("m b 1 400\nfresh b");
  assert.deepEqual(kinds(events, "reset"), [
    { channel: "a", epoch: "0" },
    { channel: "b", epoch: "400" },
  ]);
  assert.deepEqual(kinds(events, "message").map((m) => `${m.channel}${m.seq}@${m.epoch}`), [
    "a5@100",
    "b3@200",
    "a1@300",
    "b1@400",
  ]);
  c.close();
});
