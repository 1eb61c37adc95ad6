// Runs a variant's `kv_buffer` graph (runtime/graph_io.py) with onnxruntime-web or onnxruntime-node.
//
//   input_ids, position_ids [rows, seq] int64; seqlens_k [rows] int32 = each row's tokens after the call - 1;
//   total_sequence_length [] int32; logits_to_keep [] int64 (1: the last position; see `keepsLogits`);
//   past_key_values.{i}.key|value [rows, n_head, past, head_dim]  →  logits [rows, kept, vocab],
//   present.{i}.key|value [rows, n_head, max(past, total), head_dim]
//
// The Python runtime binds one preallocated buffer as both past and present, so attention
// (GroupQueryAttention) writes in place. JavaScript runtimes cannot bind one buffer to both (onnxruntime-web copies
// every input into its WASM heap), so here the cache grows as the ecosystem's does: each call's present becomes
// the next call's past, exactly as long as the row's tokens. The attention over a row's positions is the same.
//
// INT4 (`min_call_rows` 2): MatMulNBits takes another kernel for one row, so a call of one token per row runs at
// least two rows, a scratch row (token 0 at position 0, every call) beside the real one, always: the Python
// runtime's probe at load (`session.lone_row_is_exact`) that lets a lone row run alone where the CPU's kernels
// agree is not run here, where the kernels are WebAssembly's (two rows are what a batch gives either way).

import { CONTRACT } from "./contract.js";

const IO = CONTRACT.io;
const cacheName = (pattern, layer, kind) => pattern.replace("{layer}", layer).replace("{kind}", kind);

export class Decoder {
  /** `ort`: the onnxruntime module (web or node); `session`: an InferenceSession of the variant's graph. */
  constructor(ort, session, architecture, minRows) {
    this.ort = ort;
    this.session = session;
    this.architecture = architecture;
    this.minRows = minRows;
    this.pastNames = [];
    this.presentNames = [];
    for (let i = 0; i < architecture.n_layer; i++) {
      for (const kind of IO.kv_kinds) {
        this.pastNames.push(cacheName(IO.past, i, kind));
        this.presentNames.push(cacheName(IO.present, i, kind));
      }
    }
    // onnxruntime-web and -node list no input for an initializer that is also a graph input (logits_to_keep,
    // default 0: every position's logits); where they do, a call keeps the last position's only
    this.keepsLogits = session.inputNames.includes(IO.logits_to_keep);
    const missing = [...this.pastNames, IO.input_ids, IO.seqlens_k].filter((n) => !session.inputNames.includes(n));
    if (missing.length) {
      throw new Error(
        `the graph is not in the ${IO.convention} convention of ${architecture.n_layer} layers ` +
          `(no input ${missing[0]}); re-export the model directory`,
      );
    }
  }

  /** An empty cache: no positions, one row. */
  empty() {
    const { n_head, n_embd } = this.architecture;
    const dims = [1, n_head, 0, n_embd / n_head];
    return { rows: 1, length: 0, kv: this.pastNames.map(() => new this.ort.Tensor("float32", new Float32Array(0), dims)) };
  }

  /**
   * The row's `ids` (one or several tokens) after the `cache`'s positions → [logits of the last position
   * (Float32Array [vocab], the caller's to change), the cache holding them too].
   */
  async run(cache, ids) {
    const seq = ids.length;
    const rows = seq === 1 ? Math.max(1, this.minRows) : 1; // several tokens are several rows to the kernels already
    const kv = cache.rows === rows ? cache.kv : this.reshaped(cache, rows);
    const inputIds = new BigInt64Array(rows * seq); // scratch rows: token 0
    const positions = new BigInt64Array(rows * seq); // scratch rows: from position 0
    const seqlens = new Int32Array(rows);
    for (let j = 0; j < seq; j++) {
      inputIds[j] = BigInt(ids[j]);
      positions[j] = BigInt(cache.length + j);
    }
    seqlens[0] = cache.length + seq - 1; // scratch rows: 0, their one token
    const T = this.ort.Tensor;
    const feeds = {
      [IO.input_ids]: new T("int64", inputIds, [rows, seq]),
      [IO.position_ids]: new T("int64", positions, [rows, seq]),
      [IO.seqlens_k]: new T("int32", seqlens, [rows]),
      [IO.total_sequence_length]: new T("int32", Int32Array.of(cache.length + seq), []),
    };
    if (this.keepsLogits) feeds[IO.logits_to_keep] = new T("int64", BigInt64Array.of(1n), []);
    this.pastNames.forEach((name, k) => (feeds[name] = kv[k]));
    const out = await this.session.run(feeds);
    const [, kept, vocab] = out[IO.logits].dims;
    const logits = out[IO.logits].data.slice((kept - 1) * vocab, kept * vocab); // row 0, its last position
    return [logits, { rows, length: cache.length + seq, kv: this.presentNames.map((name) => out[name]) }];
  }

  /** The cache with `rows` rows: its row 0, then zeroed scratch rows (never read: their lengths are 0). */
  reshaped(cache, rows) {
    return cache.kv.map((t) => {
      const [, heads, positions, dim] = t.dims;
      const rowSize = heads * positions * dim;
      const data = new Float32Array(rows * rowSize);
      data.set(t.data.subarray(0, rowSize));
      return new this.ort.Tensor("float32", data, [rows, heads, positions, dim]);
    });
  }
}
