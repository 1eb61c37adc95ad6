// The Python runtime's results on the same model directory, reproduced in Node.js (onnxruntime-node).
// tests/test_web.py writes the cases (GPT2_ONNX_WEB_CASES: a JSON file of { model_dir, precision, prompt,
// options, token_ids, text, finish_reason }) and runs `node --test`; without it these tests skip.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { load } from "../src/node.js";

const file = process.env.GPT2_ONNX_WEB_CASES;
const cases = file ? JSON.parse(readFileSync(file, "utf8")) : [];
const generators = new Map();
const generator = async (dir, precision) => {
  const key = `${dir} ${precision}`;
  if (!generators.has(key)) generators.set(key, await load(dir, { precision, threads: 1 }));
  return generators.get(key);
};

test("the Python runtime's cases", { skip: !file && "GPT2_ONNX_WEB_CASES is not set (tests/test_web.py sets it)" }, async (t) => {
  for (const c of cases) {
    await t.test(`${c.precision} ${JSON.stringify(c.prompt)} ${JSON.stringify(c.options)}`, async () => {
      const gen = await generator(c.model_dir, c.precision);
      const result = await gen.generate(c.prompt, c.options);
      assert.deepEqual(result.token_ids, c.token_ids);
      assert.equal(result.text, c.text);
      assert.equal(result.finish_reason, c.finish_reason);
      let streamed = "";
      for await (const piece of gen.stream(c.prompt, c.options)) streamed += piece;
      assert.equal(streamed, c.text);
    });
  }
});

test("sampling is deterministic per seed", { skip: !file && "GPT2_ONNX_WEB_CASES is not set" }, async () => {
  const gen = await generator(cases[0].model_dir, cases[0].precision);
  const options = { do_sample: true, top_k: 0, temperature: 1.5, max_new_tokens: 16 };
  const run = async (seed) => (await gen.generate("今天", { ...options, seed })).token_ids;
  assert.deepEqual(await run(7), await run(7));
  const others = await Promise.all([1, 2, 3].map(run));
  assert.ok(others.some((ids) => JSON.stringify(ids) !== JSON.stringify(others[0])), "three seeds, one sequence");
});
