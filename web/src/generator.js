// Generator: a model directory's variant, its tokenizer and the decode loop, for one prompt at a time.
//
//   prompt ─encode ([CLS] + ids)─> fit the context ─> prefill ─> choose ─> emit ─> step ─> choose ─> …
//   choose: bias, processors, greedy | sample          emit: text piece, stop token | stop string | length
//
// The same loop as the Python runtime's engine for one row (runtime/sequences.py `_choose`, `_emit`): the same
// greedy ids from the same directory. `generate` collects it, `stream` is a view of it. Loading (files, sessions,
// checksums) is the platform's: node.js and browser.js call `Generator.open` with their own `platform`.

import { CONTRACT } from "./contract.js";
import { Decoder } from "./decoder.js";
import { Rng, applyBias, greedy, processScores, sample } from "./logits.js";
import { ModelDirectoryError, checkManifest, checkSha256 } from "./manifest.js";
import { GenerationOptionError, isSampling, resolveConfig } from "./options.js";
import { TextCodec, TextStream } from "./text.js";

const FINISH = CONTRACT.finish;

export class Generator {
  constructor(manifest, codec, decoder, precision) {
    this.manifest = manifest;
    this.codec = codec;
    this.decoder = decoder;
    this.precision = precision;
  }

  /**
   * Load a model directory through `platform`: { where, readJson(name), sha256(name), createSession(graph, data),
   * ort }. `precision`: "int8" (default), "int4" or "fp32"; `verify`: check every file's sha256 (default true).
   */
  static async open(platform, { precision = CONTRACT.default_precision, verify = true } = {}) {
    const { where } = platform;
    const manifest = checkManifest(await readJson(platform, CONTRACT.files.manifest), where, precision);
    const { variant } = manifest;
    if (verify) {
      const files = [
        [CONTRACT.files.tokenizer, manifest.tokenizerSha256],
        [variant.graph, variant.graphSha256],
        [variant.data, variant.dataSha256],
      ];
      for (const [name, expected] of files) checkSha256(where, name, await platform.sha256(name), expected);
    }
    const codec = new TextCodec(await readJson(platform, CONTRACT.files.tokenizer), manifest.conventions);
    const session = await platform.createSession(variant.graph, variant.data);
    const decoder = new Decoder(platform.ort, session, manifest.architecture, manifest.minRows);
    return new Generator(manifest, codec, decoder, precision);
  }

  /** The settings a call with these options would use (the manifest's defaults filled in). */
  config(options = {}) {
    return resolveConfig(this.manifest.generationDefaults, options);
  }

  /** Prompt ids as generate() runs them: the family's prefix ([CLS]) first. */
  encode(prompt) {
    if (typeof prompt !== "string") throw new GenerationOptionError(`prompt must be a string, got ${typeof prompt}`, "prompt");
    if (!prompt.isWellFormed()) {
      throw new GenerationOptionError("the prompt is not valid UTF-8: it holds a lone surrogate; pass well-formed text", "prompt");
    }
    const ids = this.codec.encode(prompt);
    // a family without a prompt prefix (English GPT-2) starts an empty prompt from its end-of-text token
    return ids.length ? ids : this.manifest.conventions.stop_token_ids.slice(0, 1);
  }

  /** The text of token ids as generated text reads (special tokens dropped, the family's spacing). */
  decode(ids) {
    return this.codec.decode(ids);
  }

  /**
   * Generate one prompt's continuation: { text, token_ids, finish_reason, prompt_tokens, timings } (the Python
   * GenerationResult's fields; timings: time_to_first_token_s, decode_s, new_tokens, decode_tokens_per_s).
   */
  async generate(prompt, options = {}) {
    const result = { text: "", token_ids: [], finish_reason: "", prompt_tokens: 0 };
    const start = performance.now();
    let first = null;
    for await (const event of this.events(prompt, options)) {
      first ??= performance.now();
      result.text += event.text;
      result.token_ids.push(...event.tokens);
      result.finish_reason = event.finish_reason ?? result.finish_reason;
      result.prompt_tokens = event.prompt_tokens;
    }
    const end = performance.now();
    first ??= end;
    const n = result.token_ids.length;
    const decodeS = (end - first) / 1000;
    result.timings = {
      time_to_first_token_s: (first - start) / 1000,
      decode_s: decodeS,
      new_tokens: n,
      decode_tokens_per_s: n > 1 && decodeS > 0 ? (n - 1) / decodeS : 0,
    };
    return result;
  }

  /** The text of one prompt's continuation, piece by piece (never a character split); joins to generate()'s. */
  async *stream(prompt, options = {}) {
    for await (const event of this.events(prompt, options)) if (event.text) yield event.text;
  }

  /**
   * The decode loop: one event per new token, { tokens: [id], text, finish_reason (null until the last),
   * prompt_tokens }. A max_new_tokens of 0 gives one event without tokens.
   */
  async *events(prompt, options = {}) {
    const config = this.config(options);
    const ids = this.fitContext(this.encode(prompt), config);
    const stopIds = config.stop_token_ids ?? this.manifest.conventions.stop_token_ids;
    const vocab = this.manifest.architecture.vocab_size;
    for (const [name, seq] of [["stop_token_ids", stopIds], ["logit_bias", config.logit_bias.map(([t]) => t)]]) {
      if (seq.some((t) => t >= vocab)) {
        throw new GenerationOptionError(`${name} holds an id ≥ the vocabulary size ${vocab}: ${JSON.stringify(seq)}`, name);
      }
    }
    const promptTokens = ids.length;
    if (config.max_new_tokens === 0) {
      yield { tokens: [], text: "", finish_reason: FINISH.length, prompt_tokens: promptTokens };
      return;
    }
    const rng = new Rng(config.seed);
    const text = new TextStream(this.codec, config.stop);
    const history = [...ids];
    let [logits, cache] = await this.decoder.run(this.decoder.empty(), ids);
    for (let step = 0; ; step++) {
      applyBias(logits, config.logit_bias);
      const scores = processScores(logits, config, history, step, stopIds);
      const token = isSampling(config) ? sample(scores, config, rng) : greedy(scores);
      let [piece, hitStopString] = text.push(token);
      let reason = stopIds.includes(token) ? FINISH.stop : hitStopString ? FINISH.stop_string : null;
      if (reason === null && step + 1 === config.max_new_tokens) reason = FINISH.length;
      if (reason === FINISH.stop || reason === FINISH.length) piece += text.finish();
      yield { tokens: [token], text: piece, finish_reason: reason, prompt_tokens: promptTokens };
      if (reason !== null) return;
      history.push(token);
      [logits, cache] = await this.decoder.run(cache, [token]);
    }
  }

  /**
   * The prompt if it leaves max_new_tokens positions; else, with truncate 'left', its prefix and its most recent
   * tokens that leave them; else refused (runtime/generator.py `_fit_context`).
   */
  fitContext(ids, config) {
    const limit = this.manifest.architecture.n_positions;
    if (ids.length + config.max_new_tokens <= limit) return ids;
    const prefixIds = this.manifest.conventions.prompt_prefix_ids;
    const prefix = prefixIds.every((t, i) => ids[i] === t) ? prefixIds.length : 0;
    const room = limit - config.max_new_tokens - prefix;
    if (config.truncate !== "left" || room < 1) {
      const fixes = room >= 1 ? "shorten the prompt, lower max_new_tokens or pass truncate: 'left'" : "lower max_new_tokens";
      throw new GenerationOptionError(
        `the prompt has ${ids.length} tokens and max_new_tokens is ${config.max_new_tokens}: ` +
          `${ids.length + config.max_new_tokens} > ${limit} positions of this model; ${fixes}`,
        "prompt",
      );
    }
    return [...ids.slice(0, prefix), ...ids.slice(ids.length - room)];
  }
}

/** A model directory's JSON file through `platform`; one that does not parse is the directory's error. */
async function readJson(platform, name) {
  try {
    return await platform.readJson(name);
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    throw new ModelDirectoryError(`${platform.where}/${name} is not valid JSON (${e.message}); re-export the model directory`);
  }
}
