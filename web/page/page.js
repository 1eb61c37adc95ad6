// The page of `gpt2-onnx web`: a prompt box, streamed output, tokens/s. Query parameters: `model` (the model
// directory's URL, default /model/), `precision`, `device` (wasm or webgpu), `threads`. #stats carries data-state: loading, ready, running,
// done or error (what the browser test waits for); #ids the last run's token ids.

import { load } from "../src/browser.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const modelUrl = params.get("model") ?? "/model/";
const threads = params.has("threads") ? Number(params.get("threads")) : undefined;
let generator = null;

function status(state, text) {
  $("stats").dataset.state = state;
  $("stats").textContent = text;
}

let latest = 0; // the latest choice's load: an earlier one still running when the choice changed is dropped

async function loadVariant(precision, device) {
  const mine = ++latest;
  status("loading", `loading ${precision} on ${device} from ${modelUrl}…`);
  $("generate").disabled = true;
  generator = null; // a failed load leaves nothing to generate with
  const start = performance.now();
  let loaded;
  try {
    loaded = await load(modelUrl, { precision, threads, device });
  } catch (e) {
    if (mine === latest) fail(e);
    return;
  }
  if (mine !== latest) return;
  generator = loaded;
  const defaults = generator.config(); // the model's own (uer: sampling, top_k 70, 100 new tokens)
  for (const id of ["max_new_tokens", "top_k", "temperature"]) $(id).value = defaults[id];
  $("do_sample").checked = defaults.do_sample;
  const seconds = ((performance.now() - start) / 1000).toFixed(2);
  status("ready", `${precision} on ${device} loaded in ${seconds} s, ${crossOriginIsolated ? "" : "not "}cross-origin isolated`);
  $("generate").disabled = false;
}

function options() {
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  return {
    max_new_tokens: number("max_new_tokens"),
    do_sample: $("do_sample").checked,
    top_k: number("top_k"),
    temperature: number("temperature"),
    seed: number("seed"),
  };
}

async function generate(event) {
  event.preventDefault();
  const output = $("output");
  output.replaceChildren(Object.assign(document.createElement("span"), { className: "prompt", textContent: $("prompt").value }));
  $("error").textContent = "";
  $("generate").disabled = true;
  status("running", "generating…");
  const ids = [];
  const start = performance.now();
  let first = null;
  let reason = "";
  for await (const e of generator.events($("prompt").value, options())) {
    first ??= performance.now();
    ids.push(...e.tokens);
    output.append(e.text);
    reason = e.finish_reason ?? reason;
    const decodeS = (performance.now() - first) / 1000;
    const rate = ids.length > 1 && decodeS > 0 ? (ids.length - 1) / decodeS : 0;
    status("running", `${ids.length} tokens, ${rate.toFixed(1)} tokens/s, first token ${(first - start).toFixed(0)} ms`);
  }
  $("ids").textContent = JSON.stringify(ids);
  status("done", `${$("stats").textContent.replace(/^\d+ tokens/, `${ids.length} tokens`)} (${reason}, ${generator.precision})`);
  $("generate").disabled = false;
}

function fail(error) {
  $("error").textContent = String(error.message ?? error);
  status("error", "error");
  $("generate").disabled = !generator;
}

$("form").addEventListener("submit", (event) => generate(event).catch(fail));
const reload = () => loadVariant($("precision").value, $("device").value).catch(fail);
$("precision").addEventListener("change", reload);
$("device").addEventListener("change", reload);
$("precision").value = params.get("precision") ?? "int8";
$("device").value = params.get("device") ?? "wasm";
reload();
