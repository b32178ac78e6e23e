/** What the benchmarks share: where `../shared` is, the random Llama they measure, and child runs of themselves. */
import { join } from "node:path";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { DENO_RUN } from "./report.ts";

/** `../shared` beside the checkout (corpus, SmolLM2 tokenizer). */
export const SHARED = join(import.meta.dirname!, "..", "..", "shared");
/** The SmolLM2 tokenizer the random models use. */
export const TOKENIZER = join(SHARED, "fixtures", "smollm2-tokenizer");

/** Makes a random Llama of shape `size` (bf16, seed 0, SmolLM2 tokenizer) at `dir` unless one is there. */
export async function ensureRandomModel(dir: string, size: string): Promise<string> {
  if (!(await Deno.stat(join(dir, "config.json")).then(() => true, () => false))) {
    await makeRandomModel(dir, { arch: "llama", shape: SIZES[size], seed: 0, dtype: "BF16", tokenizer: TOKENIZER });
  }
  return dir;
}

/**
 * Runs `script` (a benchmark) again in a fresh process with this run's arguments and `--child=JOB`, and returns
 * the JSON of its last stdout line: one measurement per process, so RSS and caches do not carry over.
 */
export async function runChild<T>(script: string, job: object): Promise<T> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [...DENO_RUN, script, ...Deno.args.filter((a) => !a.startsWith("--child")), `--child=${JSON.stringify(job)}`],
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`${JSON.stringify(job)} failed`);
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "") as T;
}
