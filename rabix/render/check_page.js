#!/usr/bin/env node
/*
 * Open HTML reports in headless Chromium, offline, and check what a reader would see:
 *   - every <img> loads (complete, with a natural width),
 *   - no console error and no uncaught page error,
 *   - no request leaves the machine: every request that is not file: or data: is refused and
 *     reported (page-level routing sees every http(s)/ws request the page makes),
 *   - every link to a local file points at a file that exists.
 *
 *   node rabix/render/check_page.js demo_run/index.html            # the page alone
 *   node rabix/render/check_page.js demo_run/index.html --follow   # and the local pages it links to
 *
 * Prints one JSON object ({pages: [{page, images, links, requests, problems}], problems: N}) and
 * exits 1 when any page has a problem. Chromium is the system one ($CHROMIUM or /usr/bin/chromium),
 * launched with the same flags as render.js.
 */
"use strict";

const fs = require("fs");
const path = require("path");
const { pathToFileURL, fileURLToPath } = require("url");
const { chromium } = require("playwright-core");

const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

function localFile(url) {
  const u = new URL(url);
  if (u.protocol !== "file:") return null;
  u.hash = "";
  u.search = "";
  return fileURLToPath(u.href);
}

async function checkPage(browser, file) {
  const page = await browser.newPage();
  const problems = [];
  const requests = [];
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith("file:") || url.startsWith("data:")) return route.continue();
    problems.push(`request leaving the machine refused: ${url}`);
    return route.abort();
  });
  page.on("request", (req) => requests.push(req.url()));
  page.on("requestfailed", (req) => {
    if (!problems.some((p) => p.includes(req.url()))) problems.push(`request failed: ${req.url()} (${req.failure() && req.failure().errorText})`);
  });
  page.on("console", (msg) => msg.type() === "error" && problems.push(`console error: ${msg.text()}`));
  page.on("pageerror", (err) => problems.push(`page error: ${String(err.message || err).split("\n")[0]}`));
  await page.goto(pathToFileURL(file).href, { waitUntil: "load" });
  const found = await page.evaluate(() => ({
    images: Array.from(document.images).map((img) => ({ src: img.currentSrc || img.src, ok: img.complete && img.naturalWidth > 0 })),
    links: Array.from(document.querySelectorAll("a[href]")).map((a) => a.href),
    title: document.title,
  }));
  for (const img of found.images) if (!img.ok) problems.push(`image did not load: ${img.src}`);
  const pages = [];
  for (const link of found.links) {
    const target = localFile(link);
    if (target === null) continue; // a link to the web is not a request until clicked
    if (!fs.existsSync(target)) problems.push(`link to a missing file: ${link}`);
    else if (target.endsWith(".html")) pages.push(target);
  }
  await page.close();
  return {
    result: { page: file, title: found.title, images: found.images.length, links: found.links.length, requests: requests.length, problems },
    linked: pages,
  };
}

async function main() {
  const argv = process.argv.slice(2);
  const follow = argv.includes("--follow");
  const files = argv.filter((a) => !a.startsWith("--")).map((f) => path.resolve(f));
  if (!files.length) {
    console.error("usage: check_page.js PAGE.html... [--follow]");
    return 2;
  }
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  if (!fs.existsSync(executablePath)) {
    console.error(`check_page.js: no Chromium at ${executablePath} (apt-get install chromium, or set CHROMIUM)`);
    return 2;
  }
  const browser = await chromium.launch({ executablePath, headless: true, chromiumSandbox: false, args: CHROMIUM_FLAGS });
  const results = [];
  const seen = new Set();
  const queue = [...files];
  try {
    while (queue.length) {
      const file = queue.shift();
      if (seen.has(file)) continue;
      seen.add(file);
      if (!fs.existsSync(file)) {
        results.push({ page: file, images: 0, links: 0, requests: 0, problems: ["no such file"] });
        continue;
      }
      const { result, linked } = await checkPage(browser, file);
      results.push(result);
      if (follow && files.includes(file)) queue.push(...linked);
    }
  } finally {
    await browser.close();
  }
  const problems = results.reduce((n, r) => n + r.problems.length, 0);
  console.log(JSON.stringify({ pages: results, problems }, null, 2));
  return problems ? 1 : 0;
}

main().then(
  (code) => (process.exitCode = code),
  (err) => {
    console.error(`check_page.js: ${err.message}`);
    process.exitCode = 1;
  }
);
