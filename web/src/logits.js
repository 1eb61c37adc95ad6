// Logits processors and token selection, as runtime/logits.py (transformers' semantics and order):
// logit bias first, then repetition penalty, presence/frequency penalties, no-repeat n-grams, min new tokens;
// then greedy, or (sampling) temperature, top-k, top-p, min-p and a draw. `scores` is one row's logits
// (Float32Array [vocab]) and is modified in place; float32 rounding is kept where numpy computes in float32,
// so greedy decoding picks what the Python runtime picks from the same logits.

import { CONTRACT } from "./contract.js";

const f32 = Math.fround;

/** OpenAI's logit_bias: each bias added to its token's logit (numpy: float32 + float32). */
export function applyBias(scores, logitBias) {
  for (const [token, bias] of logitBias) scores[token] = f32(scores[token] + f32(bias));
}

/**
 * The processors of one step over `scores` [vocab]; `history`: every id so far (prefix, prompt, generated),
 * `nNew`: ids generated so far, `stopIds`: the ids that end a sequence.
 */
export function processScores(scores, config, history, nNew, stopIds) {
  if (config.repetition_penalty !== 1) repetitionPenalty(scores, history, config.repetition_penalty);
  if ((config.presence_penalty !== 0 || config.frequency_penalty !== 0) && nNew) {
    presenceFrequencyPenalty(scores, history.slice(history.length - nNew), config);
  }
  if (config.no_repeat_ngram_size > 0) {
    for (const t of bannedNgramTokens(history, config.no_repeat_ngram_size)) scores[t] = -Infinity;
  }
  if (nNew < config.min_new_tokens) for (const t of stopIds) scores[t] = -Infinity;
  return scores;
}

function repetitionPenalty(scores, history, penalty) {
  const p = f32(penalty); // numpy multiplies a float32 row by a Python float in float32
  for (const id of new Set(history)) {
    const s = scores[id];
    scores[id] = s < 0 ? s * p : s / p; // exact in float64, then rounded once: float32 arithmetic
  }
}

function presenceFrequencyPenalty(scores, generated, config) {
  const counts = new Map();
  for (const id of generated) counts.set(id, (counts.get(id) ?? 0) + 1);
  for (const [id, n] of counts) scores[id] = scores[id] - (config.presence_penalty + config.frequency_penalty * n);
}

/** Tokens that would repeat an n-gram already in `history`. */
export function bannedNgramTokens(history, n) {
  if (history.length + 1 < n) return [];
  const prefix = n > 1 ? history.slice(history.length - n + 1) : [];
  const banned = [];
  for (let i = 0; i + n <= history.length; i++) {
    if (prefix.every((t, j) => history[i + j] === t)) banned.push(history[i + n - 1]);
  }
  return banned;
}

/** The id of the highest score, the first on ties (numpy's and torch's argmax). */
export function greedy(scores) {
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
  return best;
}

/** Temperature, top-k, top-p, min-p, then a draw from the renormalised probabilities. */
export function sample(scores, config, rng) {
  let ids = topKIds(scores, config.top_k);
  let logits = Float64Array.from(ids, (i) => f32(scores[i] / f32(config.temperature)));
  if (config.top_p < 1) [ids, logits] = narrow(ids, logits, topPKeep(logits, config.top_p));
  if (config.min_p > 0) [ids, logits] = narrow(ids, logits, minPKeep(logits, config.min_p));
  return draw(ids, logits, rng);
}

/** Ids scoring at least the k-th best score (ties kept, as transformers); k 0 or ≥ vocab: every id. */
function topKIds(scores, k) {
  const all = () => Array.from(scores.keys());
  if (k <= 0 || k >= scores.length) return all();
  const kth = Float32Array.from(scores).sort()[scores.length - k];
  return all().filter((i) => scores[i] >= kth);
}

function narrow(ids, logits, keep) {
  return [keep.map((j) => ids[j]), Float64Array.from(keep, (j) => logits[j])];
}

/**
 * transformers' rule: keep an entry while the probability of the entries strictly better than it is below top_p
 * (at least one is kept). Only the entries at least as good as the `top_p_candidates`-th best are sorted unless
 * their mass falls short of top_p (then every entry is).
 */
function topPKeep(logits, topP) {
  const total = logSumExp(logits);
  let candidates = Array.from(logits.keys());
  const limit = CONTRACT.top_p_candidates;
  if (logits.length > limit) {
    const nth = Float64Array.from(logits).sort()[logits.length - limit];
    const best = candidates.filter((j) => logits[j] >= nth);
    if (logSumExp(Float64Array.from(best, (j) => logits[j])) - total >= Math.log(topP)) candidates = best;
  }
  candidates.sort((a, b) => logits[b] - logits[a] || a - b); // best first, stable
  const keep = [];
  let before = 0; // probability of the entries strictly better
  for (const j of candidates) {
    if (keep.length && before >= topP) break;
    keep.push(j);
    before += Math.exp(logits[j] - total);
  }
  return keep;
}

/** transformers' rule: keep the entries whose logit is at least the best one's + log(min_p). */
function minPKeep(logits, minP) {
  const floor = Math.max(...logits) + Math.log(minP);
  return Array.from(logits.keys()).filter((j) => logits[j] >= floor);
}

function logSumExp(x) {
  let m = -Infinity;
  for (const v of x) if (v > m) m = v;
  let sum = 0;
  for (const v of x) if (Number.isFinite(v)) sum += Math.exp(v - m);
  return m + Math.log(sum);
}

/** One id drawn in proportion to exp(logits - max) (runtime/logits.py's `draw`). */
function draw(ids, logits, rng) {
  let m = -Infinity;
  for (const v of logits) if (v > m) m = v;
  const probs = Float64Array.from(logits, (v) => (Number.isFinite(v) ? Math.exp(v - m) : 0));
  const target = rng.random() * probs.reduce((a, b) => a + b, 0);
  let cumulative = 0;
  for (let j = 0; j < probs.length; j++) {
    cumulative += probs[j];
    if (cumulative > target) return ids[j];
  }
  return ids[probs.length - 1];
}

/**
 * A seeded random generator (sfc32, seeded through splitmix32): the same seed gives the same draws on every
 * platform. Not numpy's PCG64: a seed samples its own sequence here, reproducibly. No seed: a random one.
 */
export class Rng {
  constructor(seed) {
    let s = seed ?? crypto.getRandomValues(new Uint32Array(1))[0];
    const next = () => {
      s = (s + 0x9e3779b9) | 0; // splitmix32
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    s = (s ^ Math.floor(s / 2 ** 32)) | 0; // seeds above 2**32 keep their high bits
    this.state = Uint32Array.of(next(), next(), next(), 1);
    for (let i = 0; i < 12; i++) this.next32();
  }

  next32() {
    const st = this.state;
    const t = (((st[0] + st[1]) >>> 0) + st[3]) >>> 0;
    st[3] = st[3] + 1;
    st[0] = st[1] ^ (st[1] >>> 9);
    st[1] = st[2] + (st[2] << 3);
    st[2] = ((st[2] << 21) | (st[2] >>> 11)) + t;
    return t;
  }

  /** A double in [0, 1) from 53 random bits. */
  random() {
    return ((this.next32() >>> 5) * 67108864 + (this.next32() >>> 6)) / 9007199254740992;
  }
}
