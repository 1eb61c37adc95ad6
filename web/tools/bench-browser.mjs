// One browser measurement of `bench --only web`: opens a page on the server of benchmarks/web.py in a fresh
// headless Chromium (cross-origin isolated, so WebAssembly threads work), runs tools/bench-page.js there and
// prints its result as one JSON line.
//
//   node tools/bench-browser.mjs SERVER_URL SPEC_JSON
// SPEC_JSON: { engine: "gpt2-onnx" | "transformers.js", threads, prompt_ids, new_tokens, reps, ... }.

import { readFileSync } from "node:fs";
import { launch } from "./chromium.mjs";

const [base, specJson] = process.argv.slice(2);
const spec = JSON.parse(specJson);
// the page's import map (page/index.html), and for transformers.js its onnxruntime-web build for both of its imports
const pageMap = JSON.parse(readFileSync(new URL("../page/index.html", import.meta.url), "utf8").match(/<script type="importmap">([\s\S]*?)<\/script>/)[1]);
const imports = spec.engine === "transformers.js" ? spec.tjs.import_map : pageMap.imports;
const html = `<!doctype html><meta charset="utf-8"><script type="importmap">${JSON.stringify({ imports })}</script><body>bench</body>`;
const { context, close } = await launch();
try {
  const page = await context.newPage();
  const url = `${base}/bench.html`;
  await page.route(url, (route) =>
    route.fulfill({
      body: html,
      contentType: "text/html",
      headers: { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" },
    }),
  );
  await page.goto(url);
  const result = await page.evaluate(async (s) => {
    const r = await (await import("/web/tools/bench-page.js")).run(s);
    return { ...r, isolated: crossOriginIsolated };
  }, spec);
  console.log(JSON.stringify(result));
} finally {
  await close();
}
