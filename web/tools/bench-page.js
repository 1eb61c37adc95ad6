// Runs in a page (headless Chromium, driven by bench-browser.mjs): batch-1 greedy generation from a prompt's ids
// by this package (onnxruntime-web) or by transformers.js on the export's ecosystem graph (model.onnx), timed by
// timing.js.

import { timeGenerator, timeRuns } from "./timing.js";

export async function run(spec) {
  return spec.engine === "transformers.js" ? runTransformersJs(spec) : runOurs(spec);
}

async function runOurs({ model_url, precision, threads, prompt_ids, new_tokens, reps }) {
  const { load } = await import("/web/src/browser.js");
  const gen = await load(model_url, { precision, threads, verify: false });
  return timeGenerator(gen, prompt_ids, new_tokens, reps);
}

async function runTransformersJs({ tjs, threads, prompt_ids, new_tokens, reps }) {
  const T = await import(tjs.module);
  T.env.allowRemoteModels = false;
  T.env.allowLocalModels = true;
  T.env.localModelPath = tjs.models;
  T.env.useBrowserCache = false;
  T.env.backends.onnx.wasm.wasmPaths = tjs.wasm_paths; // its default is a CDN
  T.env.backends.onnx.wasm.numThreads = threads;
  const model = await T.AutoModelForCausalLM.from_pretrained(tjs.model, {
    dtype: "fp32",
    device: "wasm",
    session_options: { externalData: [{ path: tjs.data_file, data: `onnx/${tjs.data_file}` }] },
  });
  const n = prompt_ids.length;
  const input_ids = new T.Tensor("int64", BigInt64Array.from(prompt_ids.map(BigInt)), [1, n]);
  const attention_mask = new T.Tensor("int64", new BigInt64Array(n).fill(1n), [1, n]);
  return timeRuns(reps, async (mark) => {
    let prompt = true;
    const streamer = new (class extends T.BaseStreamer {
      put() {
        if (!prompt) mark(); // the first put is the prompt
        prompt = false;
      }
      end() {}
    })();
    const out = await model.generate({ input_ids, attention_mask, max_new_tokens: new_tokens, do_sample: false, streamer });
    return out.tolist()[0].slice(n).map(Number);
  });
}
