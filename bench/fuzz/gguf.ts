/**
 * Fuzzes the GGUF reader with damaged files: each case is a valid GGUF written
 * by `tome convert` (tiny model, SmolLM2-style or SentencePiece-style tokenizer)
 * with header bytes flipped, header integers overwritten with extreme values,
 * or the file truncated. Every case runs in its own child process with a memory
 * cap and a watchdog; it must either open (checkpoint, tokenizer, every tensor
 * read) or fail with a TomeError. A crash, any other exception, running out of
 * memory or hanging is a finding; findings are kept under bench/results/fuzz-gguf/.
 *
 *   deno run -A bench/fuzz/gguf.ts [--cases 200] [--seed 1] [--timeout-ms 20000] [--memory-mb 512]
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { uniform } from "../../kernels/random.ts";
import { TomeError } from "../../core/errors.ts";
import { loadTensor, openCheckpoint } from "../../core/model/checkpoint.ts";
import { convertToGguf } from "../../core/model/gguf/convert.ts";
import { readGgufHeader } from "../../core/model/gguf/reader.ts";
import { makeRandomModel, SIZES } from "../../core/model/make.ts";
import { loadTokenizer } from "../../core/tokens/tokenizer.ts";
import { sentencepieceStyleTokenizer } from "../../tests/fixture_text.ts";

const { values: args } = parseArgs({
  options: {
    cases: { type: "string", default: "200" },
    seed: { type: "string", default: "1" },
    "timeout-ms": { type: "string", default: "20000" },
    "memory-mb": { type: "string", default: "512" },
    child: { type: "string" },
  },
});

if (args.child) {
  // one case: open everything a run would open; report how it ended on stdout
  let outcome: string;
  try {
    const ckpt = await openCheckpoint(args.child);
    await loadTokenizer(args.child);
    for (const name of ckpt.tensors.keys()) await loadTensor(ckpt, name);
    outcome = "opened";
  } catch (err) {
    outcome = err instanceof TomeError ? `TomeError ${err.kind}` : `BUG ${err instanceof Error ? err.stack : err}`;
  }
  console.log(outcome);
  Deno.exit(0);
}

const results = join(import.meta.dirname!, "..", "results", "fuzz-gguf");
const shared = join(import.meta.dirname!, "..", "..", "..", "shared");
await Deno.mkdir(results, { recursive: true });
const work = await Deno.makeTempDir({ prefix: "tome-fuzz-gguf-" });

/** Seed files: byte-level BPE (SmolLM2) and SentencePiece-style tokenizers, quantized and not. */
async function seeds(): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  const spm = join(work, "spm-tokenizer");
  await Deno.mkdir(spm);
  await Deno.writeTextFile(join(spm, "tokenizer.json"), JSON.stringify(sentencepieceStyleTokenizer()));
  await Deno.writeTextFile(join(spm, "tokenizer_config.json"), JSON.stringify({ bos_token: "<s>", eos_token: "</s>" }));
  const tokenizers = [join(shared, "fixtures", "smollm2-tokenizer"), spm];
  for (const [i, tok] of tokenizers.entries()) {
    for (const [arch, type] of [["llama", "q8_0"], ["qwen3", "f16"]] as const) {
      const dir = join(work, `seed-${i}-${arch}`);
      await makeRandomModel(dir, { arch, shape: { ...SIZES.tiny, layers: 1 }, seed: 1, dtype: "F32", tokenizer: tok });
      const file = join(work, `seed-${i}-${arch}.gguf`);
      await convertToGguf(dir, file, type);
      out.push(await Deno.readFile(file));
    }
  }
  return out;
}

const EXTREMES = [0n, 1n, 0xffffffffn, 1n << 31n, 1n << 32n, 1n << 53n, 1n << 62n, (1n << 64n) - 1n];

/** A damaged copy of a seed: flips, extreme integers at 4-byte boundaries in the header, or a truncation. */
function damage(seed: Uint8Array, headerEnd: number, r: () => number): { bytes: Uint8Array; how: string } {
  const bytes = seed.slice();
  const kind = Math.floor(r() * 3);
  if (kind === 0) {
    const n = 1 + Math.floor(r() * 8);
    for (let i = 0; i < n; i++) bytes[Math.floor(r() * headerEnd)] ^= 1 << Math.floor(r() * 8);
    return { bytes, how: `${n} bit flips in the header` };
  }
  if (kind === 1) {
    const at = 8 + 4 * Math.floor(r() * ((headerEnd - 16) / 4));
    const v = EXTREMES[Math.floor(r() * EXTREMES.length)];
    new DataView(bytes.buffer).setBigUint64(at, v, true);
    return { bytes, how: `u64 ${v} at byte ${at}` };
  }
  const len = Math.floor(r() * seed.length);
  return { bytes: bytes.slice(0, len), how: `truncated to ${len} of ${seed.length} bytes` };
}

async function runCase(path: string, timeoutMs: number, memoryMb: number): Promise<string> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `--v8-flags=--max-old-space-size=${memoryMb}`, import.meta.filename!, "--child", path],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const out = await child.output();
  clearTimeout(timer);
  const text = new TextDecoder().decode(out.stdout).trim();
  if (out.signal === "SIGKILL") return `HANG (killed after ${timeoutMs} ms)`;
  if (!out.success || !text) {
    return `CRASH (exit ${out.code}): ${new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ")}`;
  }
  return text;
}

const cases = Number(args.cases);
const r = uniform(Number(args.seed));
const seedFiles = await seeds();
const headerEnds = await Promise.all(seedFiles.map(async (b, i) => {
  const p = join(work, `h${i}.gguf`);
  await Deno.writeFile(p, b);
  return (await readGgufHeader(p)).dataStart;
}));
const tally = new Map<string, number>();
const findings: string[] = [];
const t0 = performance.now();
for (let i = 0; i < cases; i++) {
  const s = Math.floor(r() * seedFiles.length);
  const { bytes, how } = damage(seedFiles[s], headerEnds[s], r);
  const path = join(work, `case-${i}.gguf`);
  await Deno.writeFile(path, bytes);
  const outcome = await runCase(path, Number(args["timeout-ms"]), Number(args["memory-mb"]));
  const key = outcome.startsWith("BUG") || outcome.startsWith("CRASH") || outcome.startsWith("HANG")
    ? outcome.split(" ")[0]
    : outcome;
  tally.set(key, (tally.get(key) ?? 0) + 1);
  if (key === "BUG" || key === "CRASH" || key === "HANG") {
    const kept = join(results, `finding-${args.seed}-${i}.gguf`);
    await Deno.copyFile(path, kept);
    findings.push(`case ${i} (${how}): ${outcome.slice(0, 400)} → ${kept}`);
  }
  await Deno.remove(path);
}
await Deno.remove(work, { recursive: true });
const seconds = (performance.now() - t0) / 1000;
console.log(`${cases} cases in ${seconds.toFixed(0)}s (seed ${args.seed}):`);
for (const [k, n] of [...tally].sort((a, b) => b[1] - a[1])) console.log(`  ${String(n).padStart(5)}  ${k}`);
for (const f of findings) console.log(`FINDING ${f}`);
Deno.exit(findings.length ? 1 : 0);
