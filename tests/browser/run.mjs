// Drives Debian's headless Chromium for tests/browser.rs.
//
//   node tests/browser/run.mjs <crier-http-base> <channels> <last> [token]
//
// Serves page.html from a tiny HTTP server on 127.0.0.1, opens it in Chromium (through
// playwright-core, with the system's /usr/bin/chromium: no browser download), and speaks a
// line protocol:
//   stdout: `page <url>`, then every `CRIER …` console line of the page without the
//           prefix (`ready …`, `open …`, `message …`, `gap …`, `reset …`, `close …`,
//           `error …`, `fatal …`), and `ack <command>` after each command;
//   stdin:  `drop <downMs>` (the page cuts its connection, see CrierClient.dropConnection),
//           `token <jwt> [delayMs]` (what GET /token answers from now on, after delayMs),
//           `quit`. End of stdin means quit.
// With `token`, the page's CrierClient takes its token from GET /token on this server
// (the page's own backend, as a real site would have), first CRIER_BROWSER_TOKEN.
// It exits by itself after CRIER_BROWSER_TIMEOUT_MS (default 120000) whatever happens.

import { createServer } from "node:http";
import { readFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [crierBase, channels, last = "0", tokenMode = ""] = process.argv.slice(2);
// The page's backend: the token it hands out, and how long it takes to.
let token = process.env.CRIER_BROWSER_TOKEN ?? "";
let tokenDelayMs = 0;
if (!crierBase || !channels) {
  console.error("usage: node run.mjs <crier-http-base> <channels> [last]");
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const pageHtml = readFileSync(join(here, "page.html"));
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const timeoutMs = Number(process.env.CRIER_BROWSER_TIMEOUT_MS ?? 120000);

const out = (line) => process.stdout.write(line + "\n");

let context = null;
let httpServer = null;
let userDataDir = null;
let finishing = false;

async function finish(code) {
  if (finishing) return;
  finishing = true;
  try {
    if (context) await context.close();
  } catch (e) {
    console.error(`closing chromium: ${e}`);
  }
  if (httpServer) httpServer.close();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  process.exit(code);
}

const watchdog = setTimeout(() => {
  out(`fatal run.mjs timed out after ${timeoutMs} ms`);
  finish(3);
}, timeoutMs);
watchdog.unref();
process.on("SIGTERM", () => finish(143));
process.on("SIGINT", () => finish(130));

try {
  httpServer = createServer((req, res) => {
    if (req.url.startsWith("/token")) {
      const answer = token;
      setTimeout(() => {
        res.writeHead(200, { "Content-Type": "text/plain", "Cache-Control": "no-store" });
        res.end(answer);
      }, tokenDelayMs);
    } else if (req.url.startsWith("/page.html")) {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" });
      res.end(pageHtml);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve, reject) => {
    httpServer.once("error", reject);
    httpServer.listen(0, "127.0.0.1", resolve);
  });
  const pagePort = httpServer.address().port;

  userDataDir = mkdtempSync(join(tmpdir(), "crier-chromium-"));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: 60000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (msg) => {
    const text = msg.text();
    if (text.startsWith("CRIER ")) out(text.slice("CRIER ".length));
  });
  page.on("pageerror", (e) => out(`fatal pageerror ${String(e).replace(/\n/g, " | ")}`));
  page.on("crash", () => out("fatal page crashed"));

  const q = new URLSearchParams({ crier: crierBase, channels, last, token: tokenMode === "token" ? "1" : "" });
  const url = `http://127.0.0.1:${pagePort}/page.html?${q}`;
  out(`page ${url}`);
  await page.goto(url, { timeout: 30000 });

  const rl = createInterface({ input: process.stdin });
  rl.on("line", async (line) => {
    const [cmd, arg] = line.trim().split(/\s+/);
    try {
      if (cmd === "drop") {
        await page.evaluate((ms) => window.crier.dropConnection(ms), Number(arg ?? 0));
        out(`ack drop`);
      } else if (cmd === "token") {
        token = arg ?? "";
        tokenDelayMs = Number(line.trim().split(/\s+/)[2] ?? 0);
        out(`ack token`);
      } else if (cmd === "quit") {
        out(`ack quit`);
        await finish(0);
      } else if (cmd) {
        out(`fatal unknown command ${cmd}`);
      }
    } catch (e) {
      out(`fatal command ${cmd}: ${String(e).replace(/\n/g, " | ")}`);
    }
  });
  rl.on("close", () => finish(0));
} catch (e) {
  out(`fatal ${String(e && e.stack ? e.stack : e).replace(/\n/g, " | ")}`);
  await finish(1);
}
