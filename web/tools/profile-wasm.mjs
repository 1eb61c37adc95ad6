// Where a WebAssembly decode step's time goes (`bench --only web`): the package's Generator on onnxruntime-web's
// WebAssembly backend in Node.js (the browser's kernels, with the page's session options, without a browser), its
// profiler on over one greedy generation. Standard output is the profiler's trace alone (a JSON array of events),
// which benchmarks/profile.py reads (the first run, the prompt's prefill, is left out there).
//
//   node tools/profile-wasm.mjs SPEC_JSON     SPEC_JSON: { model_dir, precision, threads, prompt_ids, new_tokens }

import { readFile } from "node:fs/promises";
import path from "node:path";
import * as ort from "onnxruntime-web";
import { SESSION_OPTIONS } from "../src/browser.js";
import { Generator } from "../src/generator.js";

const { model_dir, precision, threads, prompt_ids, new_tokens } = JSON.parse(process.argv[2]);
ort.env.wasm.numThreads = threads;
const file = (name) => path.join(model_dir, name);
const platform = {
  where: model_dir,
  ort,
  readJson: async (name) => JSON.parse(await readFile(file(name), "utf8")),
  createSession: async (graph, data) =>
    ort.InferenceSession.create(await readFile(file(graph)), {
      ...SESSION_OPTIONS,
      executionProviders: ["wasm"],
      enableProfiling: true,
      externalData: [{ path: data, data: await readFile(file(data)) }],
    }),
};
const gen = await Generator.open(platform, { precision, verify: false });
await gen.generate(gen.decode(prompt_ids), { max_new_tokens: new_tokens, do_sample: false, stop_token_ids: [] });

gen.decoder.session.endProfiling(); // the WebAssembly module writes the trace to standard output itself
