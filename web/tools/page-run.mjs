// Opens the page of `gpt2-onnx web` in headless Chromium, generates once through its form and prints, as one
// JSON line: { loaded, ids, text, stats, isolated, threads }. Used by the browser test (tests/test_web.py).
//
//   node tools/page-run.mjs URL --prompt TEXT --max-new-tokens N [--screenshot PNG]
// The page's own URL parameters choose the model, precision and threads; generation is greedy.

import { parseArgs } from "node:util";
import { launch } from "./chromium.mjs";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { prompt: { type: "string" }, "max-new-tokens": { type: "string" }, screenshot: { type: "string" } },
});
const { context, close } = await launch();
try {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(positionals[0]);
  const stats = page.locator("#stats");
  const settled = async (states) => {
    await page.waitForFunction((s) => s.includes(document.getElementById("stats").dataset.state), states, { timeout: 600_000 });
    if ((await stats.getAttribute("data-state")) === "error") throw new Error(`the page failed: ${await page.locator("#error").textContent()} ${errors}`);
  };
  await settled(["ready", "error"]);
  const loaded = await stats.textContent();
  await page.fill("#prompt", values.prompt);
  await page.fill("#max_new_tokens", values["max-new-tokens"]);
  await page.uncheck("#do_sample");
  await page.click("#generate");
  await settled(["done", "error"]);
  if (values.screenshot) await page.screenshot({ path: values.screenshot, fullPage: true });
  const result = {
    loaded,
    ids: JSON.parse(await page.locator("#ids").textContent()),
    text: await page.locator("#output").textContent(),
    stats: await stats.textContent(),
    isolated: await page.evaluate(() => crossOriginIsolated),
  };
  console.log(JSON.stringify(result));
} finally {
  await close();
}
