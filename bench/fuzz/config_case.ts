/**
 * Worker side of the config.json fuzzer: each seed model's weights are written
 * once; a case (first byte: seed index, then the config text) replaces its
 * config.json and opens the checkpoint as `tome` does.
 */
import { join } from "node:path";
import { expectedTensors, openCheckpoint } from "../../core/model/checkpoint.ts";
import { parseConfig } from "../../core/model/config.ts";
import { writeSafetensors } from "../../core/model/safetensors.ts";
import { CONFIG_SEEDS } from "./config_seeds.ts";

/** Writes each seed's model.safetensors (zeros) under `dir`. */
export async function setup(dir: string): Promise<void> {
  for (const [i, raw] of CONFIG_SEEDS.entries()) {
    const c = parseConfig(raw);
    const m = join(dir, String(i));
    await Deno.mkdir(m, { recursive: true });
    const tensors = [...expectedTensors(c, c.tieEmbeddings)].map(([name, shape]) => ({
      name,
      shape,
      data: new Float32Array(shape.reduce((a, b) => a * b, 1)),
    }));
    await writeSafetensors(join(m, "model.safetensors"), tensors, "BF16");
  }
}

/** Opens the seed's checkpoint with the case's config.json; returns the config read and the tensor shapes. */
export async function runCase(input: Uint8Array, dir: string): Promise<unknown> {
  const m = join(dir, String(input[0] % CONFIG_SEEDS.length));
  await Deno.writeFile(join(m, "config.json"), input.subarray(1));
  const ckpt = await openCheckpoint(m);
  return {
    config: ckpt.config,
    tensors: Object.fromEntries([...ckpt.tensors].map(([k, t]) => [k, t.shape])),
  };
}
