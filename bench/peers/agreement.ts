/**
 * llama.cpp as tome's independent oracle: tiny random checkpoints (llama,
 * mistral, qwen2, qwen3; SmolLM2 tokenizer) are written as GGUF by `tome
 * convert`, then llama.cpp (node-llama-cpp 3.22.1, its prebuilt CPU binaries,
 * run by Node 20 in bench/peers/llama_logits.mjs) and tome (the ONNX graph,
 * reading the same GGUF) are teacher-forced over the same corpus tokens.
 * Reports top-1 agreement and max |Δlogit| per model and weight type.
 *
 *   deno run -A bench/peers/agreement.ts [--tokens 200] [--types f32,f16,q8_0] [--kv f32|f16] [--size tiny|small|360m]
 *     [--archs llama,mistral,qwen2,qwen3] [--llama3-rope] [--model DIR] [--out ROWS.json]
 *     [--tome-weights f32|auto|q8|q4] [--accuracy 4|0]
 *   (--tome-weights: how tome's graph holds the GGUF's matrices, default f32 (dequantized); auto/q8/q4 take
 *   Q8_0/Q4_0 blocks unchanged; --accuracy: MatMulNBits accuracy_level, 4 = int8 activations as llama.cpp's q8_0 dot)
 *   (--model: an existing checkpoint directory, e.g. the retrieval model, instead of random ones;
 *   --out: also write the rows there, for bench/peers/peers.ts)
 *   deno run -A bench/peers/agreement.ts --tokenize
 *     (llama.cpp's tokenization of 20K corpus characters against tome's, for a byte-level BPE
 *     GGUF (SmolLM2) and a SentencePiece-style one, both written by `tome convert`)
 *
 * Needs `node` (20+) and node-llama-cpp in $NODE_LLAMA_CPP_DIR (default
 * ~/.cache/tome/peers; installed there with npm on first use).
 */
import { parseArgs } from "node:util";
import { basename, join } from "node:path";
import { openCheckpoint } from "../../core/model/checkpoint.ts";
import { graphFor } from "../../core/model/cache.ts";
import type { Arch } from "../../core/model/config.ts";
import { convertToGguf, type WriteType } from "../../core/model/gguf/convert.ts";
import { makeRandomModel, SIZES } from "../../core/model/make.ts";
import {
  DEFAULT_GRAPH_OPTIONS,
  DEFAULT_QUANT,
  type GraphOptions,
  resolveWeights,
  type WeightChoice,
} from "../../core/model/onnx/decoder.ts";
import { emptyPast, ModelSession } from "../../core/model/session.ts";
import { loadTokenizer } from "../../core/tokens/tokenizer.ts";
import { report, type Row } from "../report.ts";
import { sentencepieceStyleTokenizer } from "../../tests/fixture_text.ts";

const { values: args } = parseArgs({
  options: {
    tokens: { type: "string", default: "200" },
    types: { type: "string", default: "f32,f16,q8_0" },
    kv: { type: "string", default: "f32" },
    size: { type: "string", default: "tiny" },
    archs: { type: "string", default: "llama,mistral,qwen2,qwen3" },
    tokenize: { type: "boolean", default: false },
    "llama3-rope": { type: "boolean", default: false },
    model: { type: "string" },
    out: { type: "string" },
    "tome-weights": { type: "string", default: "f32" },
    accuracy: { type: "string", default: "4" },
  },
});

const here = import.meta.dirname!;
const shared = join(here, "..", "..", "..", "shared");
const work = join(here, "..", "results", "peers");
Deno.env.set("TOME_CACHE", join(work, "cache"));
const nlcDir = Deno.env.get("NODE_LLAMA_CPP_DIR") ?? join(Deno.env.get("HOME") ?? ".", ".cache", "tome", "peers");

async function ensureNodeLlamaCpp(): Promise<void> {
  const pkg = join(nlcDir, "node_modules", "node-llama-cpp", "package.json");
  if (await Deno.stat(pkg).then(() => true, () => false)) return;
  console.error(`installing node-llama-cpp@3.22.1 into ${nlcDir} …`);
  await Deno.mkdir(nlcDir, { recursive: true });
  const r = await new Deno.Command("npm", {
    args: ["install", "--prefix", nlcDir, "--no-audit", "--no-fund", "node-llama-cpp@3.22.1"],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!r.success) throw new Error("npm install node-llama-cpp@3.22.1 failed");
}

async function llamaCppLogits(gguf: string, ids: number[]): Promise<{ logits: Float32Array; vocab: number }> {
  const idsFile = join(work, `ids-${Deno.pid}.json`);
  const outFile = join(work, `llama-logits-${Deno.pid}.f32`);
  await Deno.writeTextFile(idsFile, JSON.stringify(ids));
  const r = await new Deno.Command("node", {
    args: [join(here, "llama_logits.mjs"), gguf, idsFile, outFile, args.kv!],
    env: { NODE_LLAMA_CPP_DIR: nlcDir },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  if (!r.success) throw new Error(`llama.cpp failed on ${gguf}: ${dec.decode(r.stderr).trim().slice(-800)}`);
  const info = JSON.parse(dec.decode(r.stdout).trim().split("\n").pop()!);
  const bytes = await Deno.readFile(outFile);
  return { logits: new Float32Array(bytes.buffer, 0, bytes.length / 4), vocab: info.vocab };
}

async function tomeLogits(gguf: string, ids: number[]): Promise<Float32Array> {
  const ckpt = await openCheckpoint(gguf);
  const weights = resolveWeights(ckpt, args["tome-weights"] as WeightChoice);
  const quantized = weights === "q8" || weights === "q4";
  const opts: GraphOptions = {
    ...DEFAULT_GRAPH_OPTIONS,
    logits: "all" as const,
    kvDtype: args.kv === "f32" ? "float32" as const : "float16" as const,
    weights,
    // q8/q4: the file's Q8_0/Q4_0 blocks unchanged, the rest re-quantized at DEFAULT_QUANT's block
    ...(quantized
      ? { quant: { ...DEFAULT_QUANT, accuracyLevel: Number(args.accuracy) as 0 | 4 }, fileBlocks: true }
      : {}),
  };
  const s = await ModelSession.open(ckpt.config, opts, (await graphFor(ckpt, opts)).path);
  try {
    const r = await s.run({ ids, positions: ids.map((_, i) => i), past: emptyPast(ckpt.config, opts.kvDtype) });
    return r.logits!;
  } finally {
    await s.close();
  }
}

await ensureNodeLlamaCpp();
await Deno.mkdir(work, { recursive: true });
const tokenizer = join(shared, "fixtures", "smollm2-tokenizer");
const tok = await loadTokenizer(tokenizer);
const text = (await Deno.readTextFile(join(shared, "corpus", "war_and_peace.txt"))).slice(100_000, 110_000);

if (args.tokenize) {
  const spm = join(work, "spm-tokenizer");
  await Deno.mkdir(spm, { recursive: true });
  await Deno.writeTextFile(join(spm, "tokenizer.json"), JSON.stringify(sentencepieceStyleTokenizer()));
  await Deno.writeTextFile(join(spm, "tokenizer_config.json"), JSON.stringify({ bos_token: "<s>", eos_token: "</s>" }));
  const sample = (await Deno.readTextFile(join(shared, "corpus", "war_and_peace.txt"))).slice(300_000, 320_000) +
    (await Deno.readTextFile(join(shared, "corpus", "tinyshakespeare.txt"))).slice(0, 5_000) + " 12345 naïve 東京 🙂";
  const textFile = join(work, "sample.txt");
  await Deno.writeTextFile(textFile, sample);
  const rows: Row[] = [];
  for (const [name, t] of [["SmolLM2 (gpt2, smollm)", tokenizer], ["SentencePiece-style (llama)", spm]]) {
    const dir = join(work, "models", `tok-${rows.length}`);
    await makeRandomModel(dir, {
      arch: "llama",
      shape: { ...SIZES.tiny, layers: 1 },
      seed: 1,
      dtype: "F32",
      tokenizer: t,
    });
    const gguf = join(work, `tok-${rows.length}.gguf`);
    await convertToGguf(dir, gguf, "f16");
    const out = join(work, `llama-tokens-${Deno.pid}.json`);
    const r = await new Deno.Command("node", {
      args: [join(here, "llama_logits.mjs"), gguf, "--tokenize", textFile, out],
      env: { NODE_LLAMA_CPP_DIR: nlcDir },
      stderr: "piped",
      stdout: "piped",
    }).output();
    if (!r.success) throw new Error(new TextDecoder().decode(r.stderr).slice(-800));
    const theirs: number[] = JSON.parse(await Deno.readTextFile(out));
    const ours = (await loadTokenizer(gguf)).encode(sample);
    let first = 0;
    while (first < ours.length && ours[first] === theirs[first]) first++;
    rows.push({
      tokenizer: name,
      chars: sample.length,
      tome_tokens: ours.length,
      llama_cpp_tokens: theirs.length,
      identical: ours.length === theirs.length && first === ours.length,
      first_difference: first === ours.length && ours.length === theirs.length ? null : first,
    });
  }
  await report("peers-tokenize", "deno run -A bench/peers/agreement.ts --tokenize", rows);
  Deno.exit(0);
}
const ids = tok.encode(text).slice(0, Number(args.tokens));
const rows: Row[] = [];
for (const arch of (args.model ? ["llama"] : args.archs!.split(",")) as Arch[]) {
  const rope = args["llama3-rope"] && arch === "llama";
  const label = args.model ? basename(args.model) : `${args.size}-${arch}${rope ? "-llama3rope" : ""}`;
  const dir = args.model ?? join(work, "models", label);
  if (!args.model && !(await Deno.stat(join(dir, "config.json")).then(() => true, () => false))) {
    await makeRandomModel(dir, { arch, shape: SIZES[args.size!], seed: 3, dtype: "F32", tokenizer, llama3Rope: rope });
  }
  for (const type of args.types!.split(",") as WriteType[]) {
    const gguf = join(work, `${label}-${type}.gguf`);
    await convertToGguf(dir, gguf, type);
    const ours = await tomeLogits(gguf, ids);
    const theirs = await llamaCppLogits(gguf, ids);
    const V = theirs.vocab;
    let agree = 0, maxDiff = 0, scale = 0;
    for (let s = 0; s < ids.length; s++) {
      let a = 0, b = 0;
      for (let v = 0; v < V; v++) {
        const x = ours[s * V + v], y = theirs.logits[s * V + v];
        if (x > ours[s * V + a]) a = v;
        if (y > theirs.logits[s * V + b]) b = v;
        maxDiff = Math.max(maxDiff, Math.abs(x - y));
        scale = Math.max(scale, Math.abs(x));
      }
      if (a === b) agree++;
    }
    rows.push({
      model: label,
      weights: type,
      tome_weights: args["tome-weights"] === "f32" ? "f32" : `${args["tome-weights"]} (acc ${args.accuracy})`,
      kv: args.kv!,
      tokens: ids.length,
      top1_agree: `${agree}/${ids.length}`,
      max_abs_dlogit: Number(maxDiff.toExponential(2)),
      logit_scale: Number(scale.toFixed(2)),
    });
    console.error(JSON.stringify(rows.at(-1)));
  }
}
if (args.out) await Deno.writeTextFile(args.out, JSON.stringify(rows));
await report(
  "peers-agreement",
  `deno run -A bench/peers/agreement.ts ${Deno.args.join(" ")}`.trim(),
  rows,
);
