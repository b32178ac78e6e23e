import { join } from "node:path";
import type { Arch } from "../core/model/config.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { loadWeights } from "../core/model/reference.ts";
import { loadCorpus } from "../core/input/corpus.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { sentencepieceStyleTokenizer } from "./fixture_text.ts";

/** Writes a small generated tokenizer (vocab ≈ 370) into `dir`. */
export async function writeTestTokenizer(dir: string): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(sentencepieceStyleTokenizer()));
  await Deno.writeTextFile(
    join(dir, "tokenizer_config.json"),
    JSON.stringify({ bos_token: "<s>", eos_token: "</s>", unk_token: "<unk>" }),
  );
  return dir;
}

/** The tiny test models: one per architecture, covering tied/untied embeddings, biases, q/k norm and llama3 RoPE. */
export const TINY_MODELS: { name: string; arch: Arch; llama3Rope?: boolean }[] = [
  { name: "llama", arch: "llama" },
  { name: "llama3-rope", arch: "llama", llama3Rope: true },
  { name: "mistral", arch: "mistral" },
  { name: "qwen2", arch: "qwen2" },
  { name: "qwen3", arch: "qwen3" },
];

/** Makes the tiny test models under `root` (one directory each); returns name → directory. */
export async function makeTinyModels(root: string, dtype: "F32" | "BF16" = "F32"): Promise<Map<string, string>> {
  const tokenizer = await writeTestTokenizer(join(root, "tokenizer"));
  const dirs = new Map<string, string>();
  for (const m of TINY_MODELS) {
    const dir = join(root, m.name);
    await makeRandomModel(dir, {
      arch: m.arch,
      shape: SIZES.tiny,
      seed: 7,
      dtype,
      tokenizer,
      llama3Rope: m.llama3Rope,
    });
    dirs.set(m.name, dir);
  }
  return dirs;
}

/**
 * Attention statistics computed by brute force from probabilities [H, S, T]:
 * for each KV head, summed over its query group.
 */
export function bruteForceStats(probs: Float32Array, H: number, K: number, S: number, T: number, windowStart: number) {
  const g = H / K;
  const window = new Float32Array(K * T);
  const all = new Float32Array(K * T);
  const max = new Float32Array(K * T);
  const last = new Float32Array(K * T);
  for (let h = 0; h < H; h++) {
    const kv = Math.floor(h / g);
    for (let t = 0; t < T; t++) {
      let m = 0;
      for (let s = 0; s < S; s++) {
        const p = probs[(h * S + s) * T + t];
        all[kv * T + t] += p;
        if (s >= windowStart) {
          window[kv * T + t] += p;
          m = Math.max(m, p);
        }
        if (s === S - 1) last[kv * T + t] += p;
      }
      max[kv * T + t] += m;
    }
  }
  return { window, all, max, last };
}

/** Largest absolute difference between two arrays of the same length. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** What the training tests share: a tiny random Llama (f32) with its checkpoint, weights, tokenizer and a corpus slice. */
export async function trainingFixture(root: string, seed: number) {
  const dir = join(root, "tiny");
  await makeRandomModel(dir, {
    arch: "llama",
    shape: SIZES.tiny,
    seed,
    dtype: "F32",
    tokenizer: await writeTestTokenizer(join(root, "tok")),
  });
  const ckpt = await openCheckpoint(dir);
  return {
    dir,
    ckpt,
    c: ckpt.config,
    weights: await loadWeights(ckpt),
    tok: await loadTokenizer(dir),
    corpus: (await loadCorpus()).text.slice(0, 200_000),
  };
}
