// Opens crier's status page (GET / on the admin port) in Debian's headless Chromium for
// tests/status.rs, through playwright-core with the system's /usr/bin/chromium.
//
//   node tests/browser/status_page.mjs <page-url> <screenshot.png> <points>
//
// Waits until the page has drawn <points> updates from /stats, then prints one JSON line:
// painted pixels per canvas, the numbers shown (header, legends), the channels table, and
// the last /stats document the page drew; saves a full-page screenshot. Exits non-zero on
// a page error or after 60 s.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, shot, want = "5"] = process.argv.slice(2);
if (!url || !shot) {
  console.error("usage: node status_page.mjs <page-url> <screenshot.png> [points]");
  process.exit(2);
}
const userDataDir = mkdtempSync(join(tmpdir(), "crier-status-chromium-"));
const watchdog = setTimeout(() => {
  console.log("fatal status_page.mjs timed out after 60 s");
  process.exit(3);
}, 60000);
let context = null;
let code = 0;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1300, height: 900 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
    timeout: 60000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // Nothing may come from anywhere but the admin port.
  const origin = new URL(url).origin;
  page.on("request", (r) => {
    if (!r.url().startsWith(origin)) errors.push(`request to ${r.url()}`);
  });
  await page.goto(url, { timeout: 30000 });
  await page.waitForFunction((n) => window.crierStatus && window.crierStatus.points >= n, Number(want), {
    timeout: 30000,
    polling: 100,
  });
  const report = await page.evaluate(() => {
    const canvases = {};
    for (const c of document.querySelectorAll("canvas")) {
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      // Pixels of the series' lines: coloured (anti-aliased), where the grid and labels
      // are grey. No line drawn, no such pixels.
      let line = 0;
      for (let i = 0; i < d.length; i += 4) {
        const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]);
        if (d[i + 3] > 128 && hi - lo > 60) line++;
      }
      canvases[c.id] = { line, points: window.crierDrawn[c.id.slice(2)] };
    }
    const shown = {};
    for (const id of ["conn-total", "conn-max", "driver", "health", "uptime", "version"]) {
      shown[id] = document.getElementById(id).textContent;
    }
    for (const b of document.querySelectorAll("[data-series]")) shown[b.dataset.series] = b.textContent;
    const channels = [...document.querySelectorAll("#channels tr")].map((tr) =>
      [...tr.children].map((td) => td.textContent),
    );
    return {
      canvases,
      shown,
      channels,
      points: window.crierStatus.points,
      stats: window.crierStatus.stats,
      url: location.href,
    };
  });
  await page.screenshot({ path: shot, fullPage: true });
  if (errors.length) {
    console.log(`fatal ${errors.join(" | ")}`);
    code = 1;
  }
  if (report.url.includes("token=")) {
    console.log("fatal the token stayed in the address bar");
    code = 1;
  }
  console.log(JSON.stringify(report));
} catch (e) {
  console.log(`fatal ${String(e && e.stack ? e.stack : e).replace(/\n/g, " | ")}`);
  code = 1;
} finally {
  clearTimeout(watchdog);
  try {
    if (context) await context.close();
  } catch (e) {
    console.error(`closing chromium: ${e}`);
  }
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(code);
