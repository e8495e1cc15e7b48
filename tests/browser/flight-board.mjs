// Opens the flight board example (examples/flight-board/index.html, as run.sh serves it)
// in Debian's headless Chromium for tests/flight_board.rs, and reports what a newcomer
// would see, as lines on stdout:
//
//   node tests/browser/flight-board.mjs <page-url> <screenshot.png> <updates>
//
//   board <json>   the table each time its footer's update number changed: {seq, state,
//                  headers, rows: [[departs, flight, destination, gate, status, updated]…]}
//   shot <path>    the screenshot, taken after <updates> different boards were seen
//   fatal <why>    the page failed (a page error, a timeout)
// It exits by itself after CRIER_BROWSER_TIMEOUT_MS (default 60000) whatever happens.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, shotPath, wantArg = "3"] = process.argv.slice(2);
if (!url || !shotPath) {
  console.error("usage: node flight-board.mjs <page-url> <screenshot.png> [updates]");
  process.exit(2);
}
const want = Number(wantArg);
const timeoutMs = Number(process.env.CRIER_BROWSER_TIMEOUT_MS ?? 60000);
const out = (line) => process.stdout.write(line + "\n");

let context = null;
const userDataDir = mkdtempSync(join(tmpdir(), "crier-chromium-"));
async function finish(code) {
  try {
    if (context) await context.close();
  } catch (e) {
    console.error(`closing chromium: ${e}`);
  }
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(code);
}
const watchdog = setTimeout(() => {
  out(`fatal flight-board.mjs timed out after ${timeoutMs} ms`);
  finish(3);
}, timeoutMs);
watchdog.unref();
process.on("SIGTERM", () => finish(143));

try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1100, height: 720 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
    timeout: 60000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (e) => out(`fatal pageerror ${String(e).replace(/\n/g, " | ")}`));
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") console.error(`page console: ${msg.text()}`);
  });
  await page.goto(url, { timeout: 30000 });

  const seen = new Set();
  while (seen.size < want) {
    // The next board: the footer's update number differs from every one seen so far.
    await page.waitForFunction(
      (seen) => {
        const seq = document.getElementById("meta").dataset.seq;
        return seq !== undefined && !seen.includes(seq) && document.querySelectorAll("#board tbody tr").length > 0;
      },
      [...seen],
      { timeout: 20000, polling: 50 },
    );
    const board = await page.evaluate(() => ({
      seq: document.getElementById("meta").dataset.seq,
      state: document.getElementById("state").textContent,
      headers: [...document.querySelectorAll("#board thead th")].map((th) => th.textContent),
      rows: [...document.querySelectorAll("#board tbody tr")].map((tr) => [...tr.cells].map((td) => td.textContent)),
      changed: document.querySelector("#board tbody tr.changed")?.dataset.flight ?? null,
    }));
    seen.add(board.seq);
    out(`board ${JSON.stringify(board)}`);
  }
  await page.screenshot({ path: shotPath, fullPage: true });
  out(`shot ${shotPath}`);
  await finish(0);
} catch (e) {
  out(`fatal ${String(e && e.stack ? e.stack : e).replace(/\n/g, " | ")}`);
  await finish(1);
}
