// One Node.js measurement of `bench --only web` (onnxruntime-node); prints timing.js's result as one JSON line.
//
//   node tools/bench-node.mjs SPEC_JSON     SPEC_JSON: { model_dir, precision, threads, prompt_ids, new_tokens, reps }

import { load } from "../src/node.js";
import { timeGenerator } from "./timing.js";

const { model_dir, precision, threads, prompt_ids, new_tokens, reps } = JSON.parse(process.argv[2]);
const gen = await load(model_dir, { precision, threads, verify: false });
console.log(JSON.stringify(await timeGenerator(gen, prompt_ids, new_tokens, reps)));
