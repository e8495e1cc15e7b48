// A frontend's use of crier.js, compiled by tests/js_package.rs with `tsc --noEmit --strict`
// after `npm install <checkout>/clients/js`: it must compile, and every line marked
// `@ts-expect-error` must be refused (tsc fails on a marker with no error under it).
import {
  CrierClient,
  SUBPROTOCOL,
  TOKEN_EXPIRED,
  type CrierClientOptions,
  type CrierMessage,
  type CrierPosition,
} from "crier-client";

const protocol: "crier.v1" = SUBPROTOCOL;
const expired: 4001 = TOKEN_EXPIRED;

const options: CrierClientOptions = {
  channels: ["flights", "gates"],
  last: 20,
  backoffBaseMs: 250,
  backoffCapMs: 10_000,
  stableMs: 5_000,
  connect: false,
  WebSocket,
  token: async () => (await fetch("/crier-token")).text(),
};
const crier = new CrierClient("ws://127.0.0.1:8080/ws", options);
new CrierClient(new URL("http://127.0.0.1:8080/ws"), { token: "eyJ…" });
new CrierClient("ws://127.0.0.1:8080/ws", { token: () => "eyJ…", channels: new Set(["a"]) });

const rows = new Map<string, string>();

crier.addEventListener("message", (e) => {
  const m: CrierMessage = e.detail;
  if (m.binary) {
    const bytes: Uint8Array = m.data;
    rows.set("bytes", String(bytes.length));
    // @ts-expect-error binary data is a Uint8Array, not a string
    m.data.toUpperCase();
  } else {
    const text: string = m.data;
    rows.set("text", text);
  }
  if (m.channel !== null) {
    // Enveloped: the channel, seq and epoch are all there.
    const seq: number = m.seq;
    const epoch: string = m.epoch;
    rows.set(m.channel, `${seq}@${epoch}`);
  } else {
    const none: null = m.seq;
    rows.set("bare", String(none));
  }
  // @ts-expect-error seq may be null (a bare payload without crier.v1)
  const unchecked: number = e.detail.seq;
  void unchecked;
  // @ts-expect-error data is a string or a Uint8Array until `binary` is checked
  const notNarrowed: string = e.detail.data;
  void notNarrowed;
});
crier.addEventListener("gap", (e) => {
  const { channel, from, to, epoch } = e.detail;
  rows.set(channel, `missed ${from}..${to} in ${epoch}`);
  // @ts-expect-error a gap has no data
  void e.detail.data;
});
crier.addEventListener("reset", (e) => rows.delete(e.detail.channel + e.detail.epoch));
crier.addEventListener("open", (e) => {
  const resumed: boolean = e.detail.resumed;
  const attempt: number = e.detail.attempt;
  rows.set("open", `${e.detail.url} ${resumed} ${attempt}`);
});
crier.addEventListener("close", function (e) {
  const next: number | null = e.detail.reconnectInMs;
  // @ts-expect-error reconnectInMs is null after close()
  const always: number = e.detail.reconnectInMs;
  void always;
  const self: CrierClient = this;
  rows.set("close", `${e.detail.code} ${e.detail.reason} ${e.detail.wasClean} ${next} ${self.connected}`);
});
crier.addEventListener("error", (e) => console.warn(e.detail.message));
// Any other event name falls back to the EventTarget signature.
crier.addEventListener("custom", (e: Event) => void e.type);
const onGap = (e: CustomEvent<{ channel: string }>) => void e.detail.channel;
crier.removeEventListener("gap", onGap);

const pos: CrierPosition | null = crier.position("flights");
const seq: number = crier.lastSeq("flights") + (pos?.seq ?? 0);
const epoch: string | null = crier.epoch;
const channels: readonly string[] = crier.channels;
const url: string = crier.url;
const up: boolean = crier.connected;
crier.connect();
crier.dropConnection(1500);
crier.dropConnection();
crier.close();
void [protocol, expired, seq, epoch, channels, url, up];

// @ts-expect-error an unknown option
new CrierClient("ws://h/ws", { channel: ["flights"] });
// @ts-expect-error last is a number
new CrierClient("ws://h/ws", { last: "20" });
// @ts-expect-error a token function returns a string
new CrierClient("ws://h/ws", { token: () => 42 });
// @ts-expect-error the URL is required
new CrierClient();
// @ts-expect-error the epoch is read-only: it is the server's
crier.epoch = "1";
// @ts-expect-error a message's detail has no `from`
crier.addEventListener("message", (e) => void e.detail.from);
// @ts-expect-error lastSeq takes a channel name
crier.lastSeq(1);

