/**
 * Random Locret retaining heads for a model, so the locret policy can run
 * through the harness where no trained heads exist (the Locret authors train
 * them; the project cannot). Deterministic for a seed.
 *
 *   deno run -A bench/retaining_heads.ts MODEL_DIR OUT.safetensors [SEED]
 */
import { readConfig } from "../core/model/config.ts";
import { makeRetainingHeads } from "../core/model/make.ts";

const [model, out, seed] = Deno.args;
if (!model || !out) {
  console.error("usage: deno run -A bench/retaining_heads.ts MODEL_DIR OUT.safetensors [SEED]");
  Deno.exit(2);
}
await makeRetainingHeads(out, await readConfig(model), { seed: Number(seed ?? 0) });
console.error(`tome: random retaining heads for ${model} written to ${out}`);
