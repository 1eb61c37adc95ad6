// Browsers: a model directory served over HTTP, run by onnxruntime-web (WebAssembly, SIMD, threads where the
// page is cross-origin isolated). Bare imports ("onnxruntime-web", "@huggingface/tokenizers") resolve through the
// page's import map (see page/index.html; `gpt2-onnx web` serves both packages from web/node_modules).
//
//   import { load } from "./src/browser.js";
//   const gen = await load("/model/", { precision: "int8", threads: 2 });
//   for await (const piece of gen.stream("这是很久之前的事情了", { max_new_tokens: 50 })) output.append(piece);

import * as ort from "onnxruntime-web";
import { Generator } from "./generator.js";
import { ModelDirectoryError } from "./manifest.js";
import { CONTRACT } from "./contract.js";
import { checkThreads, GenerationOptionError } from "./options.js";

export { Generator } from "./generator.js";
export { ModelDirectoryError } from "./manifest.js";
export { GenerationOptionError } from "./options.js";

/**
 * A Generator over the model directory at `url`. `precision`: "int8" (default), "int4" or "fp32"; `threads`:
 * WebAssembly threads, for every session of the page (set by the first load; default: up to 4 where the page is
 * cross-origin isolated, else 1); `verify`: check the files' sha256 (default true); `device`: "wasm" (default,
 * every browser) or "webgpu" (the GPU, where the browser has WebGPU: fp32 and int4, see `checkDevice`).
 */
export async function load(url, { precision, threads, verify, device = "wasm" } = {}) {
  checkThreads(threads, navigator.hardwareConcurrency || 1);
  checkDevice(device, precision ?? CONTRACT.default_precision);
  // the WebGPU provider comes in its own bundle of onnxruntime-web ("onnxruntime-web/webgpu" in the import map),
  // loaded only when asked for; its tensors are its own, so the decoder makes them with the same module
  const runtime = device === "webgpu" ? await import("onnxruntime-web/webgpu") : ort;
  if (threads !== undefined) runtime.env.wasm.numThreads = threads;
  const base = new URL(url, location.href);
  const where = base.href.replace(/\/$/, "");
  const fetched = new Map(); // name → bytes, fetched once for the checksum and the session
  const bytes = async (name) => {
    if (!fetched.has(name)) {
      const response = await fetch(new URL(name, base));
      if (!response.ok) {
        throw new ModelDirectoryError(
          `cannot fetch ${new URL(name, base)} (HTTP ${response.status}): is ${where} a gpt2-onnx model directory?`,
        );
      }
      fetched.set(name, new Uint8Array(await response.arrayBuffer()));
    }
    return fetched.get(name);
  };
  const platform = {
    where,
    ort: runtime,
    readJson: async (name) => JSON.parse(new TextDecoder().decode(await bytes(name))),
    sha256: async (name) => hex(await crypto.subtle.digest("SHA-256", await bytes(name))),
    createSession: async (graph, data) => {
      const session = await runtime.InferenceSession.create(await bytes(graph), {
        ...SESSION_OPTIONS,
        executionProviders: [device],
        externalData: [{ path: data, data: await bytes(data) }],
      });
      fetched.clear(); // onnxruntime holds its own copy of the weights now
      return session;
    },
  };
  return Generator.open(platform, { precision, verify });
}

// sequential nodes, every graph optimisation (runtime/session.py); threads are ort.env.wasm.numThreads; the
// execution provider is the device's
export const SESSION_OPTIONS = { graphOptimizationLevel: "all", logSeverityLevel: 3 };

/** Refuses, naming the fix, a device this page cannot use or one whose provider lacks a kernel of the precision's graph. */
export function checkDevice(device, precision) {
  if (!CONTRACT.devices.includes(device)) {
    throw new GenerationOptionError(`device must be one of ${CONTRACT.devices.join(", ")}, got ${JSON.stringify(device)}`, "device");
  }
  if (device !== "webgpu") return;
  if (!globalThis.navigator?.gpu) {
    throw new GenerationOptionError("this browser has no WebGPU (navigator.gpu): use device \"wasm\"", "device");
  }
  const row = CONTRACT.precisions.find((p) => p.name === precision);
  if (row && !row.webgpu) {
    const on = CONTRACT.precisions.filter((p) => p.webgpu).map((p) => p.name);
    throw new GenerationOptionError(
      `precision ${precision} does not run on WebGPU (onnxruntime-web's WebGPU provider has no kernel for its ` +
        `integer matmuls): use precision ${on.join(" or ")} with device "webgpu", or device "wasm"`,
      "device",
    );
  }
}

const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
