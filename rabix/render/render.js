#!/usr/bin/env node
/*
 * Render cryoflow's CWL workflows to PNG with cwl-svg (Rabix Composer's graph library) in
 * headless Chromium: the picture a user sees on opening the workflow in Composer.
 *
 *   cd rabix/render && npm ci                     # once
 *   node rabix/render/render.js                   # every workflows/*.cwl -> docs/graphs/NAME.png
 *   node rabix/render/render.js W.cwl --out DIR   # chosen workflows, another folder
 *   (--width PX: canvas width before cropping to the graph, default 1400; PNGs at 2x)
 *
 * Chromium is the system one (Debian: apt-get install chromium), found at $CHROMIUM or
 * /usr/bin/chromium; no browser is downloaded. The page is built in memory (esbuild bundle of
 * page.js + cwl-svg's light theme compiled by sass) and every network request is refused.
 */
"use strict";

const fs = require("fs");
const path = require("path");
const esbuild = require("esbuild");
const sass = require("sass");
const yaml = require("js-yaml");
const { chromium } = require("playwright-core");

const ROOT = path.resolve(__dirname, "..", "..");
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

function parseArgs(argv) {
  const opts = { files: [], out: path.join(ROOT, "docs", "graphs"), width: 1400 };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--out") opts.out = path.resolve(argv[++i]);
    else if (argv[i] === "--width") opts.width = Number(argv[++i]);
    else opts.files.push(path.resolve(argv[i]));
  }
  if (!opts.files.length) {
    const dir = path.join(ROOT, "workflows");
    opts.files = fs.readdirSync(dir).filter((n) => n.endsWith(".cwl")).sort().map((n) => path.join(dir, n));
  }
  return opts;
}

/** Parse a workflow and embed the documents its steps' `run:` name, as Composer's resolver does. */
function loadResolved(file) {
  const doc = yaml.safeLoad(fs.readFileSync(file, "utf8"), { filename: file, json: true });
  if (doc && doc.class === "Workflow" && doc.steps) {
    const steps = Array.isArray(doc.steps) ? doc.steps : Object.values(doc.steps);
    for (const step of steps) {
      if (typeof step.run === "string") step.run = loadResolved(path.resolve(path.dirname(file), step.run));
    }
  }
  return doc;
}

/** Height of the canvas for a width, from the spread of the sbg:x/sbg:y positions. */
function canvasHeight(doc, width) {
  const ys = [];
  const xs = [];
  for (const kind of ["inputs", "outputs", "steps"]) {
    const field = doc[kind] || {};
    for (const entry of Array.isArray(field) ? field : Object.values(field)) {
      if (entry && typeof entry["sbg:x"] === "number") xs.push(entry["sbg:x"]);
      if (entry && typeof entry["sbg:y"] === "number") ys.push(entry["sbg:y"]);
    }
  }
  if (!xs.length) return Math.round(width * 0.5);
  const spanX = Math.max(...xs) - Math.min(...xs) + 250;
  const spanY = Math.max(...ys) - Math.min(...ys) + 250;
  return Math.max(300, Math.round((width * spanY) / spanX));
}

function pageHtml() {
  const bundle = esbuild.buildSync({
    entryPoints: [path.join(__dirname, "page.js")],
    bundle: true,
    write: false,
    format: "iife",
    platform: "browser",
    logLevel: "error",
  }).outputFiles[0].text;
  const svgDir = path.dirname(require.resolve("cwl-svg/package.json"));
  const css = ["src/assets/styles/theme.scss", "src/plugins/port-drag/theme.scss", "src/plugins/selection/theme.scss"]
    .map((f) => sass.compile(path.join(svgDir, f), { style: "compressed", silenceDeprecations: ["import", "global-builtin", "slash-div", "color-functions"] }).css)
    .join("\n");
  // the theme sets colours; the page only makes the canvas fill the viewport
  return `<!doctype html><html><head><meta charset="utf-8"><style>
html, body { margin: 0; padding: 0; background: #fff; }
svg#svg { width: 100vw; height: 100vh; display: block; }
${css}
</style></head><body><svg id="svg" class="cwl-workflow"></svg><script>${bundle}</script></body></html>`;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  if (!fs.existsSync(executablePath)) {
    console.error(`render.js: no Chromium at ${executablePath} (apt-get install chromium, or set CHROMIUM)`);
    return 2;
  }
  const html = pageHtml();
  fs.mkdirSync(opts.out, { recursive: true });
  const browser = await chromium.launch({ executablePath, headless: true, chromiumSandbox: false, args: CHROMIUM_FLAGS });
  let failed = 0;
  try {
    for (const file of opts.files) {
      const doc = loadResolved(file);
      const height = canvasHeight(doc, opts.width);
      const page = await browser.newPage({ viewport: { width: opts.width, height }, deviceScaleFactor: 2 });
      const problems = [];
      await page.route("**/*", (route) => route.abort());
      page.on("console", (msg) => msg.type() === "error" && problems.push(msg.text()));
      page.on("pageerror", (err) => problems.push(String(err)));
      await page.setContent(html, { waitUntil: "load" });
      let counts;
      try {
        counts = await page.evaluate((d) => window.cryoflowRender(d), doc);
      } catch (err) {
        problems.push(String(err.message || err).split("\n")[0]);
      }
      const name = path.basename(file, ".cwl");
      const png = path.join(opts.out, `${name}.png`);
      if (counts && !problems.length) {
        // crop to the drawn graph (fitToViewport never scales up, so the canvas has margins)
        const pad = 24;
        const x = Math.max(0, Math.floor(counts.box.x - pad));
        const y = Math.max(0, Math.floor(counts.box.y - pad));
        const clip = {
          x,
          y,
          width: Math.min(opts.width - x, Math.ceil(counts.box.width + 2 * pad)),
          height: Math.min(height - y, Math.ceil(counts.box.height + 2 * pad)),
        };
        await page.screenshot({ path: png, clip });
        console.log(`${path.relative(process.cwd(), png)}: ${counts.steps} steps, ${counts.inputs} inputs, ${counts.outputs} outputs`);
      } else {
        failed += 1;
        console.error(`${path.relative(process.cwd(), file)}: not rendered: ${problems.join("; ") || "no graph"}`);
      }
      await page.close();
    }
  } finally {
    await browser.close();
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => (process.exitCode = code),
  (err) => {
    console.error(`render.js: ${err.message}`);
    process.exitCode = 1;
  }
);
