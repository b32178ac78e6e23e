import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { projectText } from "../core/input/corpus.ts";

/** The project root. */
export const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** `../shared` beside the checkout (present for developers and CI). */
export const SHARED = join(ROOT, "..", "shared");
export const SMOLLM2_TOKENIZER = join(SHARED, "fixtures", "smollm2-tokenizer");
export const CORPUS = join(SHARED, "corpus");

/** True when `../shared` holds the SmolLM2 tokenizer and the corpus. */
export const hasShared = (() => {
  try {
    Deno.statSync(join(SMOLLM2_TOKENIZER, "tokenizer.json"));
    Deno.statSync(CORPUS);
    return true;
  } catch {
    return false;
  }
})();

/** The result of running the CLI. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** The arguments of `deno` that run `tome ARGS…` from this checkout, as a user would. */
export function tomeArgs(args: string[]): string[] {
  return [
    "run",
    "--quiet",
    "--v8-flags=--optimize-for-size",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    "--allow-ffi",
    "--allow-sys",
    join(ROOT, "cli", "main.ts"),
    ...args,
  ];
}

/** Runs `tome ARGS…` as a user would (a fresh Deno process), with optional stdin. */
export async function tome(
  args: string[],
  opts: { stdin?: Uint8Array | string; env?: Record<string, string> } = {},
): Promise<CliResult> {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: tomeArgs(args),
    cwd: ROOT,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...opts.env },
  });
  const child = cmd.spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(typeof opts.stdin === "string" ? new TextEncoder().encode(opts.stdin) : opts.stdin);
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A fresh temporary directory, removed by the returned function. */
export async function tempDir(
  prefix = "tome-test-",
): Promise<{ path: string; [Symbol.asyncDispose](): Promise<void> }> {
  const path = await Deno.makeTempDir({ prefix });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** A deterministic pseudo-random generator, for fixtures and segment plans. */
export { uniform as rng } from "../kernels/random.ts";

/** Splits `bytes` into a stream of pieces whose sizes come from `size()`. */
export function byteStream(bytes: Uint8Array, size: () => number): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      for (let k = 0; k < 256; k++) {
        if (at >= bytes.length) return controller.close();
        const n = Math.max(1, size());
        controller.enqueue(bytes.subarray(at, at + n));
        at += n;
      }
    },
  });
}

/** Index of the first difference between two id sequences, or -1 when equal. */
export function firstDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/**
 * `tome make-model retrieval` into `dir/retrieval` (with the SmolLM2 tokenizer when `../shared` has it), as a user
 * would; returns the model's path and the text its haystacks come from.
 */
export async function makeRetrievalCli(
  dir: string,
  env: Record<string, string>,
): Promise<{ model: string; corpus: string }> {
  const model = join(dir, "retrieval");
  const made = await tome(
    ["make-model", "retrieval", "--out", model, ...(hasShared ? ["--tokenizer", SMOLLM2_TOKENIZER] : [])],
    { env },
  );
  if (made.code !== 0) throw new Error(`make-model retrieval failed: ${made.stderr}`);
  const corpus = hasShared ? await Deno.readTextFile(join(CORPUS, "war_and_peace.txt")) : await projectText(400_000, 2);
  return { model, corpus };
}
