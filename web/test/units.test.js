// The package's pure parts: options, text conventions, logits processors, the seeded generator.

import assert from "node:assert/strict";
import { test } from "node:test";
import { CONTRACT } from "../src/contract.js";
import { Generator } from "../src/generator.js";
import { ModelDirectoryError } from "../src/manifest.js";
import { Rng, bannedNgramTokens, greedy, processScores, sample } from "../src/logits.js";
import { GenerationOptionError, checkThreads, resolveConfig } from "../src/options.js";
import { TextCodec, TextStream } from "../src/text.js";

const VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "##s", "这", "是", "。", "😀", "a"];
const TOKENIZER = {
  version: "1.0",
  added_tokens: VOCAB.slice(0, 4).map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
  normalizer: { type: "BertNormalizer", clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: false },
  pre_tokenizer: { type: "BertPreTokenizer" },
  post_processor: null,
  decoder: { type: "WordPiece", prefix: "##", cleanup: true },
  model: { type: "WordPiece", unk_token: "[UNK]", continuing_subword_prefix: "##", max_input_chars_per_word: 100, vocab: Object.fromEntries(VOCAB.map((t, i) => [t, i])) },
};
const codec = new TextCodec(TOKENIZER, { prompt_prefix_ids: [2], stop_token_ids: [3], special_token_ids: [0, 1, 2, 3], decode: "wordpiece_cjk" });

test("options: the manifest's defaults under a call's, the contract's under both", () => {
  const config = resolveConfig({ do_sample: true, top_k: 70 }, { top_k: 5, temperature: null });
  const defaults = Object.fromEntries(CONTRACT.options.map((o) => [o.name, o.default]));
  assert.equal(config.do_sample, true);
  assert.equal(config.top_k, 5);
  assert.equal(config.temperature, defaults.temperature);
  assert.equal(config.max_new_tokens, defaults.max_new_tokens);
});

test("options: a bad, unknown or unsupported option is an error naming it", () => {
  const fails = (options, option, pattern) =>
    assert.throws(() => resolveConfig({}, options), (e) => e instanceof GenerationOptionError && e.option === option && pattern.test(e.message));
  fails({ top_p: 0 }, "top_p", /top_p must be in \(0, 1\], got 0/);
  fails({ max_new_tokens: 2.5 }, "max_new_tokens", /an int ≥ 0/);
  fails({ do_sampel: true }, "do_sampel", /unknown option 'do_sampel'.*known options: /);
  fails({ num_beams: 4 }, "num_beams", /not supported by the JavaScript package/);
  fails({ constraint: { regex: "[0-9]+" } }, "constraint", /not supported by the JavaScript package/);
  fails({ logit_bias: { 5: 101 } }, "logit_bias", /in \[-100, 100\], got 101 for token id 5/);
  assert.deepEqual(resolveConfig({}, { logit_bias: { 9: 1, 3: -2 }, stop: "。" }).logit_bias, [[3, -2], [9, 1]]);
  // half of 😀 as a stop string would cut the text inside the character: refused as Python refuses it
  fails({ stop: ["ok", "a\ude00"] }, "stop", /the stop entry 'a\ude00' is not valid UTF-8: it holds a lone surrogate U\+DE00 at character 1/);
});

test("text: [CLS] first, no spaces around CJK, spaces between Latin words, ## joined, specials dropped", () => {
  assert.deepEqual(codec.encode("这是 hello"), [2, 7, 8, 4]);
  assert.equal(codec.decode([4, 5, 6, 7, 8, 9, 3, 4, 11]), "hello worlds这是。hello a");
});

test("text: streaming holds back a possible stop string, stops before it, never splits a character", () => {
  const stream = new TextStream(codec, ["是。"]);
  assert.deepEqual(stream.push(7), ["这", false]);
  assert.deepEqual(stream.push(8), ["", false]); // 是 may begin 是。
  assert.deepEqual(stream.push(9), ["", true]);
  const emoji = new TextStream(codec, ["😀x"]);
  assert.deepEqual(emoji.push(10), ["", false]);
  assert.equal(emoji.finish(), "😀");
});

test("processors: repetition penalty, no-repeat n-grams, min new tokens; greedy takes the first best", () => {
  const config = resolveConfig({}, { repetition_penalty: 2, no_repeat_ngram_size: 2, min_new_tokens: 2 });
  const scores = processScores(Float32Array.of(1, -1, 4, 4, 0.5), config, [0, 1, 4, 1], 1, [3]);
  // 0, 1, 4 penalised; 4 followed 1 before (a repeated 2-gram); 3 is the stop id, before 2 new tokens
  assert.deepEqual(Array.from(scores), [0.5, -2, 4, -Infinity, -Infinity]);
  assert.deepEqual(bannedNgramTokens([5, 6, 5, 6, 5], 3), [6]);
  assert.equal(greedy(Float32Array.of(1, 3, 3)), 1);
});

test("sampling: top-k keeps ties, top-p keeps the smallest best set, one seed one sequence", () => {
  const scores = Float32Array.of(0, 5, 5, 1, -Infinity);
  const draws = (options, seed) => {
    const rng = new Rng(seed);
    const config = resolveConfig({}, { do_sample: true, ...options });
    return new Set(Array.from({ length: 200 }, () => sample(scores, config, rng)));
  };
  assert.deepEqual(draws({ top_k: 1 }, 1), new Set([1, 2]));
  assert.deepEqual(draws({ top_k: 0, top_p: 0.4 }, 1), new Set([1])); // the second best has 0.49 after it
  assert.deepEqual(draws({ top_k: 0, top_p: 0.5 }, 1), new Set([1, 2]));
  assert.deepEqual(draws({ top_k: 0, temperature: 10 }, 2), new Set([0, 1, 2, 3])); // never the -inf one
  const sequence = (seed) => Array.from({ length: 5 }, ((rng) => () => rng.random())(new Rng(seed)));
  assert.deepEqual(sequence(3), sequence(3));
  assert.notDeepEqual(sequence(3), sequence(4));
  assert.ok(sequence(5).every((x) => x >= 0 && x < 1));
});

test("threads: an int from 1 to the machine's CPUs", () => {
  checkThreads(undefined, 2);
  checkThreads(2, 2);
  for (const bad of [0, 3, 1.5, "2"]) assert.throws(() => checkThreads(bad, 2), /threads must be an int in \[1, 2\]/);
});

test("device: wasm anywhere, webgpu only where the browser has it and for a graph it runs whole", async () => {
  const { checkDevice } = await import("../src/browser.js");
  const { load } = await import("../src/node.js");
  checkDevice("wasm", "int8");
  assert.throws(() => checkDevice("gpu", "fp32"), (e) => e.option === "device" && /device must be one of wasm, webgpu/.test(e.message));
  const navigator = Object.getOwnPropertyDescriptor(globalThis, "navigator");
  try {
    Object.defineProperty(globalThis, "navigator", { value: {}, configurable: true });
    assert.throws(() => checkDevice("webgpu", "fp32"), /this browser has no WebGPU \(navigator.gpu\): use device "wasm"/);
    Object.defineProperty(globalThis, "navigator", { value: { gpu: {} }, configurable: true });
    checkDevice("webgpu", "fp32");
    checkDevice("webgpu", "int4");
    assert.throws(() => checkDevice("webgpu", "int8"), /precision int8 does not run on WebGPU .*: use precision fp32 or int4 with device "webgpu", or device "wasm"/);
  } finally {
    if (navigator) Object.defineProperty(globalThis, "navigator", navigator);
    else delete globalThis.navigator;
  }
  await assert.rejects(load("/nowhere", { device: "webgpu" }), (e) => e.option === "device" && /device must be "cpu" in Node.js/.test(e.message));
});

test("a prompt that is not well-formed text is refused, naming the prompt", () => {
  const gen = new Generator({ conventions: { stop_token_ids: [3] } }, codec, null, "fp32");
  assert.deepEqual(gen.encode("这是"), [2, 7, 8]);
  assert.throws(() => gen.encode("a\ud800"), (e) => e.option === "prompt" && /not valid UTF-8/.test(e.message));
});

test("a model directory's file that is not JSON is the directory's error, naming the file and the fix", async () => {
  const platform = { where: "/models/m", readJson: async () => JSON.parse("{ not json") };
  await assert.rejects(
    Generator.open(platform),
    (e) => e instanceof ModelDirectoryError && /\/models\/m\/gpt2_onnx\.json is not valid JSON .*re-export/.test(e.message),
  );
});
