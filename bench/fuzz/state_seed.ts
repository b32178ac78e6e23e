/**
 * A valid saved state to mutate: a tiny llama model reads 120 tokens with
 * snapkv at budget 48 and `saveState` writes the file (float16 KV), and one
 * more with float32 KV. Made once per fuzzing run, in a temporary directory.
 */
import { join } from "node:path";
import { loadModel, read, saveState } from "../../core/mod.ts";
import { makeTinyModels } from "../../tests/model_fixtures.ts";

/** The bytes of two valid state files, made by `saveState` on a tiny model. */
export async function makeStateSeeds(): Promise<Uint8Array[]> {
  const root = await Deno.makeTempDir({ prefix: "tome-fuzz-state-seed-" });
  const cache = Deno.env.get("TOME_CACHE");
  Deno.env.set("TOME_CACHE", join(root, "cache"));
  try {
    const models = await makeTinyModels(join(root, "models"));
    const seeds: Uint8Array[] = [];
    for (const kvDtype of ["float16", "float32"] as const) {
      const m = await loadModel(models.get("llama")!, { kvDtype });
      const ids = Array.from({ length: 120 }, (_, i) => (i * 13 + 5) % m.config.vocab);
      const s = await read({ ids }, { model: m, policy: "snapkv", budget: 48, chunk: 32, prefix: [1, 2] });
      const path = join(root, `${kvDtype}.tstate`);
      await saveState(path, m, s.sequence, {
        run: {
          policy: "snapkv",
          budget: 48,
          chunk: 32,
          positions: "original",
          kvDtype,
          window: 16,
          questionPatch: false,
          decodeBudget: null,
        },
        recipe: "ask",
        questions: ["q"],
        queryAgnostic: false,
        prefix: [1, 2],
        input: { bytes: 480, files: 1, sources: ["doc.txt"] },
      });
      seeds.push(await Deno.readFile(path));
      await m.session.close();
    }
    return seeds;
  } finally {
    if (cache === undefined) Deno.env.delete("TOME_CACHE");
    else Deno.env.set("TOME_CACHE", cache);
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
}
