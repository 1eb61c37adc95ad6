// Generation options: the Python runtime's names, kinds, bounds and defaults (contract.js, written from
// runtime/option_registry.py and GenerationConfig), merged and checked as GenerationConfig.from_options does.
//
//   the contract's defaults <─ the manifest's generation_defaults <─ a call's options (null/undefined: default)
//
// Options are snake_case JavaScript object keys, as in Python (`{max_new_tokens: 20, do_sample: false}`).
// This package decodes one sequence per prompt: the options that only beams, several sequences, logprobs,
// bad words, context sliding or speculation use are refused unless they hold their defaults.

import { CONTRACT } from "./contract.js";

/** Options with a meaning here; the contract's others must keep their defaults. */
export const SUPPORTED = new Set([
  "max_new_tokens",
  "min_new_tokens",
  "do_sample",
  "temperature",
  "top_k",
  "top_p",
  "min_p",
  "repetition_penalty",
  "no_repeat_ngram_size",
  "presence_penalty",
  "frequency_penalty",
  "stop",
  "stop_token_ids",
  "logit_bias",
  "seed",
  "truncate",
]);

const BY_NAME = new Map(CONTRACT.options.map((o) => [o.name, o]));

/** A bad option: `option` names it (the page shows it beside its field). */
export class GenerationOptionError extends Error {
  constructor(message, option) {
    super(message);
    this.name = "GenerationOptionError";
    this.option = option;
  }
}

/**
 * One call's settings: `defaults` (a manifest's generation_defaults) over the contract's, `options` over both.
 * Returns a frozen plain object keyed by option name; lists are arrays, logit_bias is [[id, bias], ...] in id order.
 */
export function resolveConfig(defaults, options = {}) {
  for (const [source, values] of [
    ["manifest generation_defaults", defaults],
    ["generate()", options],
  ]) {
    const unknown = Object.keys(values).filter((k) => !BY_NAME.has(k)).sort();
    if (unknown.length) {
      const known = [...BY_NAME.keys()].sort().join(", ");
      throw new GenerationOptionError(`unknown option '${unknown[0]}' in ${source}; known options: ${known}`, unknown[0]);
    }
  }
  const config = {};
  for (const o of CONTRACT.options) {
    const given = options[o.name] ?? defaults[o.name];
    const value = given === undefined ? o.default : coerce(o, given);
    // an option this package lacks is refused as such, before its value is judged by rules it does not apply
    if (!SUPPORTED.has(o.name) && JSON.stringify(value) !== JSON.stringify(o.default)) {
      throw new GenerationOptionError(
        `${o.name} is not supported by the JavaScript package, which decodes one sequence per prompt; ` +
          `leave it out, or use the Python runtime (gpt2_onnx.Generator)`,
        o.name,
      );
    }
    check(o, value);
    config[o.name] = value;
  }
  return Object.freeze(config);
}

/** Sampling in effect: do_sample with a non-zero temperature (GenerationConfig.sampling). */
export const isSampling = (config) => config.do_sample && config.temperature > 0;

const LISTS = new Set(["texts", "ids", "words"]);

function coerce(o, value) {
  if (LISTS.has(o.kind) && typeof value === "string") return [value];
  if (o.kind === "id map" && value !== null && typeof value === "object" && !Array.isArray(value)) {
    return Object.entries(value)
      .map(([k, v]) => [mapKey(o, k), v])
      .sort((a, b) => a[0] - b[0]);
  }
  return value;
}

function mapKey(o, key) {
  if (/^[0-9]+$/.test(key)) return Number(key);
  throw new GenerationOptionError(`${o.name} keys must be token ids (ints ≥ 0, such as '100'), got '${key}'`, o.name);
}

function check(o, value) {
  if (value === null && o.nullable) return;
  const wrong = () => new GenerationOptionError(`${o.name} must be ${o.allowed}, got ${show(value)}`, o.name);
  if (o.kind === "texts") {
    if (!Array.isArray(value) || !value.every((s) => typeof s === "string" && s))
      throw new GenerationOptionError(`${o.name} must be a list of non-empty strings, got ${show(value)}`, o.name);
    // a lone surrogate would match half of a character and cut the text inside it (option_registry.require_utf8)
    const lone = value.find((s) => !s.isWellFormed());
    if (lone !== undefined) {
      const at = [...lone].findIndex((ch) => ch.length === 1 && ch.charCodeAt(0) >= 0xd800 && ch.charCodeAt(0) <= 0xdfff);
      const code = [...lone][at].charCodeAt(0).toString(16).toUpperCase();
      throw new GenerationOptionError(
        `the ${o.name} entry ${show(lone)} is not valid UTF-8: it holds a lone surrogate U+${code} at character ${at}; pass UTF-8 text`,
        o.name,
      );
    }
  } else if (o.kind === "ids" || o.kind === "words") {
    if (!Array.isArray(value)) throw wrong();
    if (o.kind === "ids" && !value.every((t) => Number.isInteger(t) && t >= 0))
      throw new GenerationOptionError(`${o.name} must be a list of token ids (ints ≥ 0), got ${show(value)}`, o.name);
  } else if (o.kind === "id map") {
    if (!Array.isArray(value)) throw wrong();
    for (const [token, number] of value) {
      if (!inRange(o, number))
        throw new GenerationOptionError(
          `${o.name} values must be numbers in [${o.low}, ${o.high}], got ${show(number)} for token id ${token}`,
          o.name,
        );
    }
  } else if (o.kind === "choice") {
    if (!o.choices.includes(value)) throw wrong();
  } else if (o.kind === "bool") {
    if (typeof value !== "boolean") throw wrong();
  } else if ((o.kind === "int" && !Number.isInteger(value)) || !inRange(o, value)) {
    throw wrong();
  }
}

function inRange(o, v) {
  if (typeof v !== "number" || Number.isNaN(v)) return false;
  if (o.low !== null && (o.open_low ? v <= o.low : v < o.low)) return false;
  return o.high === null || v <= o.high;
}

const show = (v) => (typeof v === "string" ? `'${v}'` : JSON.stringify(v));

/** Refuse a thread count outside [1, the machine's CPUs] (runtime/generator.py `check_threads`); undefined: default. */
export function checkThreads(threads, most) {
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1 && threads <= most)) {
    throw new GenerationOptionError(
      `threads must be an int in [1, ${most}] (this machine's CPUs; more threads only contend for them), got ${show(threads)}`,
      "threads",
    );
  }
}
