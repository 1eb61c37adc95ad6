// The model directory's manifest (gpt2_onnx.json, runtime/manifest.py): checked before anything runs, with
// errors that say what to do. The files themselves are checked against their sha256 by the loader.

import { CONTRACT } from "./contract.js";

export class ModelDirectoryError extends Error {
  constructor(message) {
    super(message);
    this.name = "ModelDirectoryError";
  }
}

/** The parsed manifest `raw` of the directory `where`, checked; the variant of `precision` picked. */
export function checkManifest(raw, where, precision) {
  const path = `${where}/${CONTRACT.files.manifest}`;
  const malformed = (what) => new ModelDirectoryError(`${path} is malformed: ${what}; re-export the model directory`);
  if (raw?.format_version !== CONTRACT.format_version) {
    throw new ModelDirectoryError(
      `${path} has format_version ${JSON.stringify(raw?.format_version)}, this package reads version ` +
        `${CONTRACT.format_version}; re-export it with \`gpt2-onnx export SOURCE NEW_DIR\``,
    );
  }
  for (const name of CONTRACT.architecture) {
    const v = raw.architecture?.[name];
    if (!Number.isInteger(v) || v < 1) throw malformed(`architecture.${name} must be an int ≥ 1, got ${JSON.stringify(v)}`);
  }
  const c = raw.conventions ?? {};
  for (const name of ["prompt_prefix_ids", "stop_token_ids", "special_token_ids"]) {
    if (!Array.isArray(c[name]) || !c[name].every(Number.isInteger)) throw malformed(`conventions.${name} must be a list of ints`);
  }
  if (!Object.values(CONTRACT.decode).includes(c.decode)) {
    throw malformed(`conventions.decode must be one of ${Object.values(CONTRACT.decode).join(", ")}, got ${JSON.stringify(c.decode)}`);
  }
  const variants = raw.variants ?? {};
  if (!(precision in variants)) {
    throw new ModelDirectoryError(
      `${where} has no '${precision}' variant (it has ${Object.keys(variants).join(", ")}); pick one of those or ` +
        `re-export with \`gpt2-onnx export SOURCE DIR --quantize ${precision} --force\``,
    );
  }
  const variant = variants[precision];
  const graph = (variant.graphs ?? []).find((g) => g.io === CONTRACT.io.convention);
  if (!graph) throw malformed(`variants.${precision} has no graph in the ${CONTRACT.io.convention} convention`);
  return {
    architecture: raw.architecture,
    conventions: c,
    generationDefaults: raw.generation_defaults ?? {},
    tokenizerSha256: raw.tokenizer_sha256,
    variant: { graph: graph.file, graphSha256: graph.sha256, data: variant.data_file, dataSha256: variant.data_sha256 },
    minRows: CONTRACT.precisions.find((p) => p.name === precision)?.min_call_rows ?? 1,
  };
}

/** Refuse a file whose sha256 is not the manifest's. */
export function checkSha256(where, name, found, expected) {
  if (found !== expected) {
    throw new ModelDirectoryError(
      `${where}/${name} does not match its checksum in ${CONTRACT.files.manifest} (sha256 ${found}, expected ` +
        `${expected}): the file is damaged or was changed; re-export the model directory`,
    );
  }
}
