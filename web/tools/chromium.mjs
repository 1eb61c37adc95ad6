// Headless Chromium through playwright-core, at the system's executable (playwright never downloads a browser
// here): $CHROMIUM, else the first of CANDIDATES that exists.

import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];
const FLAGS = [
  "--headless",
  "--no-sandbox",
  // WebGPU on SwiftShader's Vulkan, on the CPU: the same adapter on every machine the tests and benchmarks run on
  "--enable-unsafe-webgpu",
  "--enable-features=Vulkan",
  "--use-vulkan=swiftshader",
  "--use-webgpu-adapter=swiftshader",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export function chromiumPath() {
  const found = process.env.CHROMIUM ?? CANDIDATES.find(existsSync);
  if (!found || !existsSync(found)) throw new Error("no Chromium found: apt-get install -y chromium (or set CHROMIUM)");
  return found;
}

/** A fresh headless Chromium (its own profile directory), and a function that closes it and removes the profile. */
export async function launch() {
  const profile = mkdtempSync(path.join(tmpdir(), "gpt2-onnx-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath(),
    headless: true,
    args: FLAGS,
    viewport: { width: 900, height: 700 },
  });
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}
