// Types of crier.js, the browser client of crier (see README.md beside this file).
// tests/js_package.rs compiles a program against them with `tsc --strict`, including
// misuses that must not compile.

/// <reference lib="dom" />

/** The subprotocol that asks crier for envelopes (`m <channel> <seq> <epoch>\n<payload>`). */
export declare const SUBPROTOCOL: "crier.v1";

/** The close code crier sends when the connection's token expired. */
export declare const TOKEN_EXPIRED: 4001;

/**
 * The signed token crier checks (`--jwt-key-file`), sent as `?token=`: a string, or a
 * function (possibly async) called before every connection and reconnection.
 */
export type CrierToken = string | (() => string | Promise<string>);

/** What crier.js needs of a WebSocket: the browser's, or e.g. the `ws` package's in Node. */
export interface CrierWebSocketLike {
  binaryType: string;
  readonly readyState: number;
  readonly protocol: string;
  // crier.js assigns these (it reads `data` of a message event; `code`, `reason` and
  // `wasClean` of a close event); `any` so that every WebSocket's own event types fit.
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: any) => any) | null;
  onclose: ((ev: any) => any) | null;
  onerror: ((ev: any) => any) | null;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor (`typeof WebSocket` fits). */
export type CrierWebSocketConstructor = new (url: string, protocols?: string | string[]) => CrierWebSocketLike;

export interface CrierClientOptions {
  /** Channels to subscribe to; the broadcast channel `*` is always heard, and resumed only if listed. */
  channels?: Iterable<string>;
  /** On the first connection, first receive up to this many of the latest messages of each channel. */
  last?: number;
  /** First reconnect delay bound, in ms (default 500). */
  backoffBaseMs?: number;
  /** Largest reconnect delay bound, in ms (default 30000). */
  backoffCapMs?: number;
  /** A connection that lasted this long (ms) resets the backoff (default 10000). */
  stableMs?: number;
  /** WebSocket constructor (default `globalThis.WebSocket`; for Node.js before 22). */
  WebSocket?: CrierWebSocketConstructor;
  /** Connect at once (default true); else call `connect()`. */
  connect?: boolean;
  /** See {@link CrierToken}. */
  token?: CrierToken | null;
}

/** A message's payload: a string for a text message, bytes for a binary one. */
export type CrierPayload = { binary: false; data: string } | { binary: true; data: Uint8Array };

/** A message in the `crier.v1` envelope: its channel, sequence number and epoch. */
export type CrierEnvelopedMessage = { channel: string; seq: number; epoch: string } & CrierPayload;

/** A bare payload, when the server did not agree to `crier.v1` (nothing to resume from). */
export type CrierBareMessage = { channel: null; seq: null; epoch: null } & CrierPayload;

/** `detail` of a `message` event. */
export type CrierMessage = CrierEnvelopedMessage | CrierBareMessage;

/** `detail` of a `gap` event: messages `from..=to` of the channel will never come. */
export interface CrierGap {
  channel: string;
  from: number;
  to: number;
  epoch: string;
}

/** `detail` of a `reset` event: earlier sequence numbers of the channel mean nothing now. */
export interface CrierReset {
  channel: string;
  epoch: string;
}

/** `detail` of an `open` event. */
export interface CrierOpen {
  url: string;
  /** True when this connection resumed with `since=`. */
  resumed: boolean;
  attempt: number;
}

/** `detail` of a `close` event. */
export interface CrierClose {
  code: number;
  reason: string;
  wasClean: boolean;
  /** The delay before the next attempt; null after `close()`. */
  reconnectInMs: number | null;
}

/** `detail` of an `error` event: an unparsable frame (skipped), or a token function that failed. */
export interface CrierError {
  message: string;
}

/** A channel's position: the epoch and the last sequence number delivered (or skipped by a gap). */
export interface CrierPosition {
  epoch: string;
  seq: number;
}

export interface CrierEventMap {
  message: CustomEvent<CrierMessage>;
  gap: CustomEvent<CrierGap>;
  reset: CustomEvent<CrierReset>;
  open: CustomEvent<CrierOpen>;
  close: CustomEvent<CrierClose>;
  error: CustomEvent<CrierError>;
}

/** A subscription to crier channels that survives disconnections. */
export declare class CrierClient extends EventTarget {
  /**
   * @param url the WebSocket endpoint, e.g. `ws://host:8080/ws` (`http(s)://` is turned into
   *   `ws(s)://`); a query string in it is replaced.
   */
  constructor(url: string | URL, options?: CrierClientOptions);

  /** The endpoint, without query string. */
  readonly url: string;
  /** The channels subscribed to, without duplicates, in the order given. */
  readonly channels: readonly string[];
  readonly last: number;
  readonly backoffBaseMs: number;
  readonly backoffCapMs: number;
  readonly stableMs: number;
  /** The epoch last learned on any channel (a decimal string: a u64 does not fit a number), or null. */
  readonly epoch: string | null;
  /** True while the WebSocket is open. */
  readonly connected: boolean;

  /** Last sequence number delivered (or skipped by a gap) on `channel`, in its epoch; 0 if none. */
  lastSeq(channel: string): number;
  /** `{epoch, seq}` of the last message delivered (or skipped by a gap) on `channel`, or null. */
  position(channel: string): CrierPosition | null;
  /** Connect now (cancelling a pending reconnect). Called by the constructor by default. */
  connect(): void;
  /** Close the connection and stop reconnecting. */
  close(): void;
  /** Testing hook: cut the connection as a network failure would; stay away at least `downMs`. */
  dropConnection(downMs?: number): void;

  addEventListener<K extends keyof CrierEventMap>(
    type: K,
    listener: (this: CrierClient, ev: CrierEventMap[K]) => any,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof CrierEventMap>(
    type: K,
    listener: (this: CrierClient, ev: CrierEventMap[K]) => any,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
