// crier.js: the browser client of crier, served by crier itself at GET /crier.js.
//
// A plain ES module with no dependency and no build step:
//
//   import { CrierClient } from "http://host:8080/crier.js";
//   const crier = new CrierClient("ws://host:8080/ws", { channels: ["flights"], last: 20 });
//   crier.addEventListener("message", (e) => show(e.detail.channel, e.detail.seq, e.detail.data));
//   crier.addEventListener("gap", (e) => refetch(e.detail.channel));      // missed for good
//   crier.addEventListener("reset", (e) => clearBoard(e.detail.channel)); // server restarted
//
// What it does:
// - connects with the subprotocol `crier.v1`, so every message arrives in an envelope
//   (`m <channel> <seq> <epoch>\n<payload>`), and remembers, per channel, the epoch and
//   the last sequence number delivered (in crier's cluster mode each channel has its own
//   epoch; on a single box they are all the server's);
// - when the connection drops, reconnects after an exponential backoff with full jitter
//   (a random delay in [0, min(cap, base * 2^attempt)]), so that a crowd of clients cut at
//   the same moment does not come back in the same second; the attempt count starts
//   again after a connection that stayed up for `stableMs`;
// - resumes with `since=<epoch>:<seq>,…` (one item per channel, in the order given; an item
//   names its channel's epoch where it differs from the previous item's), so the server
//   replays what was missed, then continues live, each message exactly once. Every
//   reconnection after a connection that opened resumes, also before any message has
//   arrived: a channel with no position yet is resumed from 0, in the last epoch learned
//   (`0` before any), so messages published while the client was away are not skipped;
// - reports, as events, what cannot be replayed: `gap` (those messages are gone from the
//   server's history) and `reset` (the server restarted: sequence numbers start afresh);
// - sends a signed token (`token` option: a string, or a function, possibly async, called
//   before every connection) as `?token=`; when the server closes with 4001 (token
//   expired) it fetches a new one and reconnects at once, resuming where it was.
//
// Events (all `CustomEvent`s; read `event.detail`):
//   message  {channel, seq, epoch, data, binary}  data: string (text) or Uint8Array (binary)
//   gap      {channel, from, to, epoch}            messages from..=to will never come
//   reset    {channel, epoch}                      earlier seqs of the channel mean nothing;
//                                                  what the server still holds follows (not
//                                                  sent for a channel nothing arrived on yet)
//   open     {url, resumed, attempt}
//   close    {code, reason, wasClean, reconnectInMs}  reconnectInMs is null after close()
//   error    {message}                            an unparsable frame (it is skipped)
//
// Sequence numbers are JavaScript numbers (exact up to 2^53); the epoch is kept as the
// decimal string the server sends, since a u64 does not fit a number.

/** The subprotocol that asks crier for envelopes. */
export const SUBPROTOCOL = "crier.v1";

/** The close code crier sends when the connection's token expired. */
export const TOKEN_EXPIRED = 4001;

const NEWLINE = 0x0a;

/**
 * A subscription to crier channels that survives disconnections.
 *
 * @extends EventTarget
 */
export class CrierClient extends EventTarget {
  /**
   * @param {string} url  the WebSocket endpoint, e.g. `ws://host:8080/ws` (`http(s)://` is
   *   accepted and turned into `ws(s)://`); a query string in it is replaced.
   * @param {object} [options]
   * @param {string[]} [options.channels]  channels to subscribe to (the broadcast channel
   *   `*` is always heard, and resumed only if listed here)
   * @param {number} [options.last]  on the first connection, first receive up to this many
   *   of the latest messages of each channel (the current state of a board)
   * @param {number} [options.backoffBaseMs=500]  first reconnect delay bound
   * @param {number} [options.backoffCapMs=30000]  largest reconnect delay bound
   * @param {number} [options.stableMs=10000]  a connection that lasted this long resets the
   *   backoff
   * @param {typeof WebSocket} [options.WebSocket]  WebSocket constructor (for Node < 22)
   * @param {boolean} [options.connect=true]  connect at once (else call `connect()`)
   * @param {string | (() => string | Promise<string>)} [options.token]  the signed token
   *   crier checks (`--jwt-key-file`), sent as `?token=`; a function is called before
   *   every (re)connection, so it can fetch a fresh token from the page's backend
   */
  constructor(url, options = {}) {
    super();
    const u = new URL(url, typeof location === "undefined" ? undefined : location.href);
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    u.search = "";
    u.hash = "";
    this.url = u.toString();
    this.channels = [...new Set(options.channels ?? [])];
    this.last = options.last ?? 0;
    this.backoffBaseMs = options.backoffBaseMs ?? 500;
    this.backoffCapMs = options.backoffCapMs ?? 30000;
    this.stableMs = options.stableMs ?? 10000;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    /** The epoch last learned (a decimal string), or null before any; see `position()`. */
    this.epoch = null;
    /** @type {Map<string, {epoch: string, seq: number}>} per channel: last delivered */
    this._pos = new Map();
    /** Set once a connection has opened: from then on every reconnection resumes. */
    this._subscribed = false;
    this._ws = null;
    this._timer = null;
    this._attempt = 0;
    this._closed = false;
    this._openedAt = 0;
    this._downUntil = 0;
    this._decoder = new TextDecoder("utf-8");
    this._token = options.token ?? null;
    /** Counts connection attempts, so a token that arrives late for one is dropped. */
    this._gen = 0;
    this._fetching = false;
    if (options.connect ?? true) this.connect();
  }

  /** Last sequence number delivered (or skipped by a gap) on `channel`, in its epoch; 0 if none. */
  lastSeq(channel) {
    return this._pos.get(channel)?.seq ?? 0;
  }

  /** `{epoch, seq}` of the last message delivered (or skipped by a gap) on `channel`, or null. */
  position(channel) {
    const p = this._pos.get(channel);
    return p ? { epoch: p.epoch, seq: p.seq } : null;
  }

  /** True while the WebSocket is open. */
  get connected() {
    return this._ws !== null && this._ws.readyState === 1;
  }

  /** Connect now (cancelling a pending reconnect). Called by the constructor by default. */
  connect() {
    this._closed = false;
    clearTimeout(this._timer);
    this._timer = null;
    if (this._ws || this._fetching) return;
    if (typeof this._token !== "function") return this._open(this._token);
    // A token source: ask it before every connection (a token may have expired since).
    const gen = ++this._gen;
    this._fetching = true;
    Promise.resolve()
      .then(() => this._token())
      .then(
        (token) => {
          this._fetching = false;
          if (gen === this._gen && !this._closed) this._open(token);
        },
        (e) => {
          this._fetching = false;
          if (gen !== this._gen || this._closed) return;
          this._emit("error", { message: `token: ${e}` });
          this._scheduleReconnect();
        },
      );
  }

  _open(token) {
    const target = this._target(token);
    let ws;
    try {
      ws = new this._WebSocket(target.url, SUBPROTOCOL);
    } catch (e) {
      this._emit("error", { message: `cannot open ${target.url}: ${e}` });
      this._scheduleReconnect();
      return;
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._openedAt = Date.now();
      this._subscribed = true;
      this._emit("open", { url: target.url, resumed: target.resumed, attempt: this._attempt });
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._onFrame(ev.data, ws.protocol === SUBPROTOCOL);
    };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      if (this._openedAt && Date.now() - this._openedAt >= this.stableMs) this._attempt = 0;
      this._openedAt = 0;
      // 4001: the token expired, which is not a failure: come back at once with a new one.
      const delay = this._closed ? null : this._scheduleReconnect(ev.code === TOKEN_EXPIRED ? 0 : undefined);
      this._emit("close", { code: ev.code, reason: ev.reason, wasClean: ev.wasClean, reconnectInMs: delay });
    };
    // An error is always followed by a close event; that is where reconnection happens.
    ws.onerror = () => {};
  }

  /** Close the connection and stop reconnecting. */
  close() {
    this._closed = true;
    this._gen += 1;
    clearTimeout(this._timer);
    this._timer = null;
    if (this._ws) this._ws.close(1000);
  }

  /**
   * Testing hook: cut the current connection as a network failure would; the client
   * reconnects and resumes as usual. With `downMs`, the "network" stays down that long:
   * no reconnection is attempted before then.
   */
  dropConnection(downMs = 0) {
    this._downUntil = Date.now() + downMs;
    if (this._ws) this._ws.close();
  }

  // The URL of the next connection: after a connection that opened, a resume.
  _target(token) {
    const q = [];
    if (this.channels.length) q.push(`channels=${this.channels.join(",")}`);
    if (token) q.push(`token=${encodeURIComponent(token)}`);
    let resumed = false;
    if (this._subscribed && this.channels.length) {
      // Each channel from its own position. One with none yet (nothing arrived on it)
      // starts from 0 in the last epoch learned, `0` before any: the server then replays
      // all it holds for it (after a reset notice, which is not reported, see _onReset;
      // on a single box, after a gap notice for what it no longer holds). An item names
      // its epoch only where it differs from the previous item's.
      let prev = null;
      const items = this.channels.map((c) => {
        const p = this._pos.get(c) ?? { epoch: this.epoch ?? "0", seq: 0 };
        const item = prev === p.epoch ? `${p.seq}` : `${p.epoch}:${p.seq}`;
        prev = p.epoch;
        return item;
      });
      q.push(`since=${items.join(",")}`);
      resumed = true;
    } else if (this.last > 0) {
      q.push(`last=${this.last}`);
    }
    return { url: q.length ? `${this.url}?${q.join("&")}` : this.url, resumed };
  }

  // Exponential backoff with full jitter; returns the delay chosen. `now` (0) skips it.
  _scheduleReconnect(now) {
    const bound = Math.min(this.backoffCapMs, this.backoffBaseMs * 2 ** Math.min(this._attempt, 30));
    const jitter = now ?? Math.floor(Math.random() * bound);
    const delay = Math.max(jitter, this._downUntil - Date.now());
    if (now === undefined) this._attempt += 1;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      if (!this._closed) this.connect();
    }, delay);
    return delay;
  }

  _onFrame(data, enveloped) {
    const binary = typeof data !== "string";
    if (!enveloped) {
      // The server did not agree to crier.v1: bare payloads, nothing to resume from.
      const payload = binary ? new Uint8Array(data) : data;
      this._emit("message", { channel: null, seq: null, epoch: null, data: payload, binary });
      return;
    }
    let header;
    let payload;
    if (binary) {
      const bytes = new Uint8Array(data);
      const nl = bytes.indexOf(NEWLINE);
      if (nl < 0) return this._emit("error", { message: "binary frame without an envelope header" });
      header = this._decoder.decode(bytes.subarray(0, nl));
      payload = bytes.subarray(nl + 1);
    } else {
      const nl = data.indexOf("\n");
      if (nl < 0) return this._emit("error", { message: `text frame without an envelope header: ${data.slice(0, 80)}` });
      header = data.slice(0, nl);
      payload = data.slice(nl + 1);
    }
    const f = header.split(" ");
    switch (f[0]) {
      case "m":
        if (f.length === 4 && isSeq(f[2]) && isEpoch(f[3])) {
          return this._onMessage(f[1], Number(f[2]), f[3], payload, binary);
        }
        break;
      case "gap":
        if (!binary && f.length === 5 && isSeq(f[2]) && isSeq(f[3]) && isEpoch(f[4])) {
          return this._onGap(f[1], Number(f[2]), Number(f[3]), f[4]);
        }
        break;
      case "reset":
        if (!binary && f.length === 3 && isEpoch(f[2])) return this._onReset(f[1], f[2]);
        break;
      default:
        // A notice of a later protocol revision: skipped.
        return;
    }
    this._emit("error", { message: `malformed envelope header: ${header.slice(0, 120)}` });
  }

  // Bring `channel` to `epoch`: a channel known under another epoch gets a reset first
  // (in case the server's own reset notice was lost with a connection).
  _enterEpoch(channel, epoch) {
    this.epoch = epoch;
    const p = this._pos.get(channel);
    if (p && p.epoch !== epoch) {
      this._pos.set(channel, { epoch, seq: 0 });
      this._emit("reset", { channel, epoch });
    } else if (!p) {
      this._pos.set(channel, { epoch, seq: 0 });
    }
    return this._pos.get(channel);
  }

  _onMessage(channel, seq, epoch, data, binary) {
    const p = this._enterEpoch(channel, epoch);
    if (seq <= p.seq) return; // already delivered (belt and braces: the server sends none)
    p.seq = seq;
    this._emit("message", { channel, seq, epoch, data, binary });
  }

  _onGap(channel, from, to, epoch) {
    const p = this._enterEpoch(channel, epoch);
    if (to <= p.seq) return;
    from = Math.max(from, p.seq + 1);
    p.seq = to;
    this._emit("gap", { channel, from, to, epoch });
  }

  // A reset of a channel the client has no position on (nothing arrived on it yet, so
  // the resume named a guessed epoch) only teaches the epoch: there is nothing to throw
  // away, and what the server holds follows. Epoch `0` is the server saying it knows no
  // epoch for the channel (cluster mode: Redis holds no state for it): the channel then
  // has no position, so that its first message is no second reset.
  _onReset(channel, epoch) {
    const known = this._pos.has(channel);
    if (epoch === "0") {
      this._pos.delete(channel);
    } else {
      this.epoch = epoch;
      this._pos.set(channel, { epoch, seq: 0 });
    }
    if (known) this._emit("reset", { channel, epoch });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function isSeq(s) {
  return /^[0-9]{1,16}$/.test(s);
}

function isEpoch(s) {
  return /^[0-9]{1,20}$/.test(s);
}
