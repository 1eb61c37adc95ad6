// Node.js: a model directory on disk, run by onnxruntime-node (its CPU execution provider).
//
//   import { load } from "gpt2-onnx";   // web/ of the repository; `npm ci` there first
//   const gen = await load("models/uer--gpt2-distil-chinese-cluecorpussmall", { precision: "int8" });
//   const { text } = await gen.generate("这是很久之前的事情了", { max_new_tokens: 50 });

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { Generator } from "./generator.js";
import { ModelDirectoryError } from "./manifest.js";
import { checkThreads, GenerationOptionError } from "./options.js";

export { Generator } from "./generator.js";
export { ModelDirectoryError } from "./manifest.js";
export { GenerationOptionError } from "./options.js";

/**
 * A Generator over the model directory `dir`. `precision`: "int8" (default), "int4" or "fp32"; `threads`:
 * intra-op threads (default: the CPUs Node.js may use); `verify`: check the files' sha256 (default true);
 * `device`: "cpu", the only one here (the browser's are "wasm" and "webgpu").
 */
export async function load(dir, { precision, threads, verify, device = "cpu" } = {}) {
  checkThreads(threads, availableParallelism());
  if (device !== "cpu") {
    throw new GenerationOptionError(
      `device must be "cpu" in Node.js (onnxruntime-node's CPU provider; "wasm" and "webgpu" are the browser's), ` +
        `got ${JSON.stringify(device)}`,
      "device",
    );
  }
  const where = path.resolve(dir);
  const file = (name) => path.join(where, name);
  const platform = {
    where,
    ort,
    readJson: async (name) => {
      let text;
      try {
        text = await readFile(file(name), "utf8");
      } catch (e) {
        throw new ModelDirectoryError(
          `cannot read ${file(name)} (${e.code}): is ${where} a gpt2-onnx model directory? ` +
            `Export one with \`gpt2-onnx export SOURCE ${dir}\``,
        );
      }
      return JSON.parse(text);
    },
    sha256: (name) =>
      new Promise((resolve, reject) => {
        const hash = createHash("sha256");
        createReadStream(file(name))
          .on("data", (chunk) => hash.update(chunk))
          .on("error", (e) => reject(new ModelDirectoryError(`cannot read ${file(name)} (${e.code}); re-export the model directory`)))
          .on("end", () => resolve(hash.digest("hex")));
      }),
    // onnxruntime reads the graph and its external data (resolved beside it) itself
    createSession: (graph) => ort.InferenceSession.create(file(graph), sessionOptions(threads ?? availableParallelism())),
  };
  return Generator.open(platform, { precision, verify });
}

/** One thread pool of `threads`, sequential nodes, every graph optimisation (runtime/session.py). */
export function sessionOptions(threads) {
  return {
    executionProviders: ["cpu"],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: "sequential",
    graphOptimizationLevel: "all",
    logSeverityLevel: 3,
  };
}
