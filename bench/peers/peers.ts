/**
 * tome beside llama.cpp (node-llama-cpp 3.22.1, its prebuilt CPU binaries, run
 * by Node 20): `deno task peers` writes three tables to bench/results/peers/
 * (JSON and Markdown) and prints them.
 *
 *   agreement  teacher-forced top-1 and max |Δlogit| over 200 corpus tokens (bench/peers/agreement.ts) for tiny
 *              llama/mistral/qwen2/qwen3, the 360M shape and the retrieval model, f32 weights and KV
 *              (pass: 100% top-1 and max |Δlogit| ≤ 1e-3)
 *   speed      prefill of one prompt (batch 512; tome's default chunk) and decode of 64 tokens, peak RSS (VmHWM of a process
 *              per run), 360M-shaped random Llama: llama.cpp f32/f16/q8_0 with n_ctx = the input, tome full and
 *              snapkv 1024; ratios tome / llama.cpp at the same weight type
 *   recall     "what users get today": the retrieval model at 32K tokens, a needle at 11 depths; llama.cpp with
 *              a 4K context fed the prompt as Ollama truncates and shifts it and as LM Studio's truncateMiddle
 *              keeps it (bench/peers/truncate.ts), tome snapkv 1024 (and the full cache for reference)
 *
 *   deno task peers [--quick] [--parts agreement,speed,recall] [--lengths 4096,8192,16384,65536]
 *     [--llama-types f32,f16,q8_0|none] [--tome-weights f32,q8] [--tome-policies full,snapkv]
 *     [--recall-length 32768] [--depths 0,10,…,100]
 *     [--n-ctx 4096] [--budget 1024] [--threads N]
 *
 * --quick: tiny shapes, short inputs and three depths (the smoke test's setting). Needs `node` (20+);
 * node-llama-cpp is installed with npm into $NODE_LLAMA_CPP_DIR (default ~/.cache/tome/peers) on first use.
 * The machine's load average is recorded with every table: timings on a shared machine are not comparable.
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { convertToGguf, type WriteType } from "../../core/model/gguf/convert.ts";
import { makeRandomModel, SIZES } from "../../core/model/make.ts";
import { makeRetrievalModel } from "../../core/model/retrieval.ts";
import { loadTokenizer } from "../../core/tokens/tokenizer.ts";
import { haystack, scoreAnswer, trialSeed } from "../../core/eval/haystack.ts";
import { runNiah } from "../../core/eval/niah.ts";
import { loadModel } from "../../core/mod.ts";
import * as decoder from "../../core/model/onnx/decoder.ts";
import { needlePrompt } from "../../recipes/needle.ts";
import { DENO_RUN, machine, type Row } from "../report.ts";
import { OLLAMA_NUM_KEEP, ollamaTruncate, truncateMiddle } from "./truncate.ts";

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    parts: { type: "string", default: "agreement,speed,recall" },
    lengths: { type: "string" },
    "llama-types": { type: "string", default: "f32,f16,q8_0" },
    "tome-weights": { type: "string" },
    "tome-policies": { type: "string", default: "full,snapkv" },
    "recall-length": { type: "string" },
    depths: { type: "string" },
    "n-ctx": { type: "string" },
    budget: { type: "string", default: "1024" },
    decode: { type: "string" },
    threads: { type: "string", default: String(navigator.hardwareConcurrency) },
    out: { type: "string" },
  },
});
const quick = args.quick!;
const parts = args.parts!.split(",");
const here = import.meta.dirname!;
const shared = join(here, "..", "..", "..", "shared");
const out = args.out ?? join(here, "..", "results", "peers");
const work = join(out, "work");
Deno.env.set("TOME_CACHE", join(work, "cache"));
const nlcDir = Deno.env.get("NODE_LLAMA_CPP_DIR") ?? join(Deno.env.get("HOME") ?? ".", ".cache", "tome", "peers");
const tokenizerDir = join(shared, "fixtures", "smollm2-tokenizer");
const threads = args.threads!;
const budget = Number(args.budget);
const dec = new TextDecoder();
const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
const mib = (b: number | null | undefined) => b == null ? null : Number((b / 2 ** 20).toFixed(b < 2 ** 24 ? 1 : 0));

await Deno.mkdir(work, { recursive: true });
if (!(await exists(join(nlcDir, "node_modules", "node-llama-cpp", "package.json")))) {
  console.error(`installing node-llama-cpp@3.22.1 into ${nlcDir} …`);
  await Deno.mkdir(nlcDir, { recursive: true });
  const r = await new Deno.Command("npm", {
    args: ["install", "--prefix", nlcDir, "--no-audit", "--no-fund", "node-llama-cpp@3.22.1"],
  }).output();
  if (!r.success) throw new Error("npm install node-llama-cpp@3.22.1 failed");
}

/** Runs a child, returns the last JSON object line of its stdout ({} if none; {error} with the end of its stderr). */
async function child(cmd: string, argv: string[]): Promise<Record<string, unknown>> {
  const r = await new Deno.Command(cmd, {
    args: argv,
    env: { NODE_LLAMA_CPP_DIR: nlcDir },
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (!r.success) return { error: dec.decode(r.stderr).trim().split("\n").slice(-3).join(" ").slice(-300) };
  const last = dec.decode(r.stdout).trim().split("\n").findLast((l) => l.startsWith("{"));
  return last ? JSON.parse(last) : {};
}

/** Writes one table as JSON and Markdown beside the others, and prints it. */
async function table(name: string, title: string, rows: Row[], notes: string[]): Promise<void> {
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (v: Row[string]) =>
    typeof v !== "number"
      ? String(v ?? "")
      : Number.isInteger(v)
      ? String(v)
      : Math.abs(v) < 1e-3
      ? v.toExponential(1)
      : String(Number(v.toPrecision(3)));
  const meta = {
    date: new Date().toISOString(),
    machine: machine(),
    load_average: Deno.loadavg(),
    command: `deno task peers ${Deno.args.join(" ")}`.trim(),
  };
  const md = [
    `### ${title}`,
    "",
    `| ${cols.join(" | ")} |`,
    `|${cols.map(() => "---").join("|")}|`,
    ...rows.map((r) => `| ${cols.map((c) => cell(r[c]).replaceAll("|", "\\|")).join(" | ")} |`),
    "",
    ...notes.map((n) => `- ${n}`),
    `- ${meta.date.slice(0, 16)}Z, ${meta.machine.os}, ${meta.machine.cpus} CPUs, ${meta.machine.memory_gib} GiB, ` +
    `load average ${meta.load_average.map((x) => x.toFixed(1)).join(" / ")} (1/5/15 min); \`${meta.command}\``,
  ].join("\n");
  console.log(md + "\n");
  await Deno.writeTextFile(join(out, `${name}.json`), JSON.stringify({ name, ...meta, notes, rows }, null, 2) + "\n");
  await Deno.writeTextFile(join(out, `${name}.md`), md + "\n");
}

const loadStart = Deno.loadavg();
console.error(`load average at start: ${loadStart.join(" ")}`);

if (parts.includes("agreement")) {
  const sets: [string, string[]][] = [["tiny, 4 architectures", ["--size", "tiny"]]];
  if (!quick) sets.push(["360M shape, llama", ["--size", "360m", "--archs", "llama"]]);
  const retrieval = join(work, "retrieval");
  if (!(await exists(join(retrieval, "config.json")))) {
    await makeRetrievalModel(retrieval, { tokenizer: tokenizerDir });
  }
  sets.push(["retrieval model", ["--model", retrieval]]);
  const rows: Row[] = [];
  for (const [what, extra] of sets) {
    const file = join(work, `agreement-${rows.length}.json`);
    const r = await child(Deno.execPath(), [
      ...DENO_RUN,
      join(here, "agreement.ts"),
      "--tokens",
      quick ? "64" : "200",
      "--types",
      "f32",
      "--kv",
      "f32",
      ...extra,
      "--out",
      file,
    ]);
    if (r.error) {
      rows.push({ model: what, error: String(r.error) });
      continue;
    }
    for (const row of JSON.parse(await Deno.readTextFile(file)) as Row[]) {
      const [agree, of] = String(row.top1_agree).split("/").map(Number);
      rows.push({ ...row, pass: agree === of && Number(row.max_abs_dlogit) <= 1e-3 });
    }
  }
  await table("agreement", "Agreement with llama.cpp (teacher-forced, f32 weights and KV)", rows, [
    "GGUF written by `tome convert`; tome reads the same file. Pass: 100% top-1 and max |Δlogit| ≤ 1e-3.",
  ]);
}

if (parts.includes("speed")) {
  const size = quick ? "tiny" : "360m";
  const dir = join(work, `speed-${size}`);
  if (!(await exists(join(dir, "config.json")))) {
    await makeRandomModel(dir, { arch: "llama", shape: SIZES[size], seed: 0, dtype: "F32", tokenizer: tokenizerDir });
    // random weights: allow the long inputs the table asks for (the shape's own limit is 8192)
    const cfg = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    cfg.max_position_embeddings = 131072;
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(cfg, null, 2));
  }
  const tok = await loadTokenizer(tokenizerDir);
  const book = await Deno.readTextFile(join(shared, "corpus", "war_and_peace.txt"));
  const lengths = (args.lengths ?? (quick ? "512,1024" : "4096,8192")).split(",").map(Number);
  const bookIds = tok.encode(book.slice(0, Math.ceil(Math.max(...lengths) * 5)));
  const decode = args.decode ?? (quick ? "8" : "64");
  const weights = (args["tome-weights"] ?? ("resolveWeights" in decoder ? "f32,q8" : "f32")).split(",");
  const cfg = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  // llama.cpp's KV: K and V of every layer and KV head, f16 (its default)
  const kvPerToken = cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size / cfg.num_attention_heads) * 4;
  const rows: Row[] = [];
  // written after each run, so a run cut short still leaves its table
  const write = () =>
    table("speed", `Speed and memory, ${size}-shaped random Llama (f32 checkpoint), ${threads} threads`, rows, [
      `prefill: one prompt, batch 512 (llama.cpp) / tome's default chunk (512 at f32, 256 at q8/q4); ` +
      `decode: ${decode} greedy tokens after it; ` +
      "peak RSS: VmHWM of a process per run (llama.cpp in Node, tome in Deno; weights mmapped by llama.cpp count when touched).",
      `llama.cpp: n_ctx = the input + ${decode} + 16, f16 KV (its default), flash attention off; ` +
      "tome: f16 KV (the CLI's default), snapkv with the question patch of the last 8 prompt tokens.",
      "ratios: tome / llama.cpp at the same weight type (> 1 is tome faster, or tome using more memory for rss_ratio).",
    ]);
  for (const length of lengths) {
    if (bookIds.length < length) throw new Error(`the corpus slice has only ${bookIds.length} tokens`);
    const idsFile = join(work, `speed-ids-${length}.json`);
    await Deno.writeTextFile(idsFile, JSON.stringify(bookIds.slice(0, length)));
    const llama: Record<string, Row> = {};
    // llama.cpp's first type (f32, the peer of tome's f32 weights) runs before tome, the others after it
    // `--llama-types none`: tome's rows alone (e.g. 64K, where llama.cpp's prefill takes hours on 2 cores)
    const types = (args["llama-types"] === "none" ? [] : args["llama-types"]!.split(",")) as WriteType[];
    const runLlama = async (type: WriteType) => {
      const gguf = join(work, `speed-${size}-${type}.gguf`);
      if (!(await exists(gguf))) await convertToGguf(dir, gguf, type);
      console.error(`speed: llama.cpp ${type} at ${length} …`);
      const r = await child("node", [join(here, "llama_run.mjs"), "speed", gguf, idsFile, decode, threads]);
      const row: Row = r.error ? { run: `llama.cpp ${type}`, tokens: length, error: String(r.error) } : {
        run: `llama.cpp ${type}`,
        tokens: length,
        prefill_tok_s: Math.round(length / Number(r.prefill_s)),
        decode_tok_s: Number((Number(r.decoded) / Number(r.decode_s)).toFixed(1)),
        peak_rss_mib: mib(Number(r.peak_rss)),
        kv_mib: mib(Number(r.n_ctx) * kvPerToken),
      };
      llama[type] = row;
      rows.push(row);
      compare();
      await write();
    };
    // against llama.cpp at the same weight type (q8 ↔ q8_0, q4 ↔ q4_0), filled in as the peers' rows arrive
    const tomeRows: [string, Row][] = [];
    const compare = () => {
      for (const [w, row] of tomeRows) {
        const peerType = w === "q8" ? "q8_0" : w === "q4" ? "q4_0" : w;
        const peer = llama[peerType];
        if (!peer || peer.error) continue;
        row.vs = `llama.cpp ${peerType}`;
        row.prefill_ratio = Number((Number(row.prefill_tok_s) / Number(peer.prefill_tok_s)).toFixed(2));
        row.decode_ratio = Number((Number(row.decode_tok_s) / Number(peer.decode_tok_s)).toFixed(2));
        row.rss_ratio = Number((Number(row.peak_rss_mib) / Number(peer.peak_rss_mib)).toFixed(2));
      }
    };
    if (types.length) await runLlama(types[0]);
    for (const w of weights) {
      for (const policy of args["tome-policies"]!.split(",")) {
        console.error(`speed: tome ${policy} ${w} at ${length} …`);
        const r = await child(Deno.execPath(), [
          ...DENO_RUN,
          join(here, "tome_run.ts"),
          dir,
          idsFile,
          policy,
          String(budget),
          decode,
          threads,
          w,
        ]);
        const run = `tome ${policy === "full" ? "full" : `snapkv ${budget}`} (${w} weights)`;
        if (r.error) {
          rows.push({ run, tokens: length, error: String(r.error) });
          await write();
          continue;
        }
        const row: Row = {
          run,
          tokens: length,
          prefill_tok_s: Math.round(length / Number(r.prefill_s)),
          decode_tok_s: Number((Number(r.decoded) / Number(r.decode_s)).toFixed(1)),
          peak_rss_mib: mib(Number(r.peak_rss)),
          kv_mib: mib(Number(r.kv_peak_bytes)),
        };
        tomeRows.push([w, row]);
        rows.push(row);
        compare();
        await write();
      }
    }
    for (const type of types.slice(1)) await runLlama(type);
  }
}

if (parts.includes("recall")) {
  const retrieval = join(work, "retrieval");
  if (!(await exists(join(retrieval, "config.json")))) await makeRetrievalModel(retrieval, { tokenizer: tokenizerDir });
  const gguf = join(work, "retrieval-f32.gguf");
  if (!(await exists(gguf))) await convertToGguf(retrieval, gguf, "f32");
  const length = Number(args["recall-length"] ?? (quick ? "2048" : "32768"));
  const nCtx = Number(args["n-ctx"] ?? (quick ? "512" : "4096"));
  const depths = (args.depths ?? (quick ? "0,50,100" : "0,10,20,30,40,50,60,70,80,90,100")).split(",").map(Number);
  const corpus = await Deno.readTextFile(join(shared, "corpus", "war_and_peace.txt"));
  const seed = 0, maxTokens = 8;
  const model = await loadModel(retrieval);
  const cfg = model.config;
  const prompts: number[][] = [];
  const hays = depths.map((d) =>
    haystack(corpus, model.tokenizer, length, d / 100, trialSeed(seed, length, d / 100, 0))
  );
  for (const h of hays) {
    const p = needlePrompt(model, h);
    prompts.push([...p.prefix, ...model.tokenizer.encode(h.text), ...p.suffix]);
  }
  await model.session.close();
  const ask = async (name: string, truncated: number[][]) => {
    const file = join(work, `recall-${name}.json`), answers = join(work, `recall-${name}-answers.json`);
    await Deno.writeTextFile(file, JSON.stringify(truncated));
    console.error(`recall: llama.cpp ${name} …`);
    const r = await child("node", [
      join(here, "llama_run.mjs"),
      "generate",
      gguf,
      file,
      String(nCtx),
      String(OLLAMA_NUM_KEEP),
      String(maxTokens),
      threads,
      answers,
    ]);
    if (r.error) throw new Error(`llama.cpp ${name}: ${r.error}`);
    return (JSON.parse(await Deno.readTextFile(answers)) as number[][]).map((ids) => model.tokenizer.decode(ids));
  };
  const ollama = await ask("ollama", prompts.map((p) => ollamaTruncate(p, nCtx, OLLAMA_NUM_KEEP)));
  const middle = await ask("truncate-middle", prompts.map((p) => truncateMiddle(p, nCtx, maxTokens)));
  const tome: Record<string, { answer: string; kv: number }[]> = { snapkv: [], full: [] };
  for (const policy of ["snapkv", "full"]) {
    console.error(`recall: tome ${policy} …`);
    for await (
      const row of runNiah({
        model: retrieval,
        policies: [policy],
        budgets: [budget],
        chunk: 512,
        kvDtype: "float16",
        threads: Number(threads),
        frame: needlePrompt,
        lengths: [length],
        depths: depths.map((d) => d / 100),
        needles: 1,
        corpus,
        seed,
        positions: "auto",
      })
    ) tome[policy].push({ answer: row.answer, kv: row.kv_peak_bytes });
  }
  const mark = (answer: string, code: string) => {
    const s = scoreAnswer(answer, code);
    return s.exact ? "yes" : `no (${s.digits || "-"})`;
  };
  const kvPerToken = cfg.layers * cfg.kvHeads * cfg.headDim * 2 * 2; // K and V, f16
  const rows: Row[] = hays.map((h, i) => ({
    depth: `${depths[i]}%`,
    code: h.needle.code,
    [`ollama (n_ctx ${nCtx})`]: mark(ollama[i], h.needle.code),
    [`LM Studio truncateMiddle (n_ctx ${nCtx})`]: mark(middle[i], h.needle.code),
    [`tome snapkv ${budget}`]: mark(tome.snapkv[i].answer, h.needle.code),
    "tome full": mark(tome.full[i].answer, h.needle.code),
  }));
  const recall = (answers: string[]) =>
    `${answers.filter((a, i) => scoreAnswer(a, hays[i].needle.code).exact).length}/${hays.length}`;
  rows.push({
    depth: "recall",
    code: "",
    [`ollama (n_ctx ${nCtx})`]: recall(ollama),
    [`LM Studio truncateMiddle (n_ctx ${nCtx})`]: recall(middle),
    [`tome snapkv ${budget}`]: recall(tome.snapkv.map((t) => t.answer)),
    "tome full": recall(tome.full.map((t) => t.answer)),
  });
  rows.push({
    depth: "KV MiB (f16)",
    code: "",
    [`ollama (n_ctx ${nCtx})`]: mib(nCtx * kvPerToken),
    [`LM Studio truncateMiddle (n_ctx ${nCtx})`]: mib(nCtx * kvPerToken),
    [`tome snapkv ${budget}`]: mib(Math.max(...tome.snapkv.map((t) => t.kv))),
    "tome full": mib(Math.max(...tome.full.map((t) => t.kv))),
  });
  await table("recall", `What users get today: the retrieval model at ${length} tokens, one needle per depth`, rows, [
    `ollama: the prompt cut as Ollama's runner does (keep the first num_keep = ${OLLAMA_NUM_KEEP} tokens and the last ` +
    `n_ctx - ${OLLAMA_NUM_KEEP}, dropping the front of the rest), then its context shift when the answer fills the ` +
    "cache (drop half of what follows the kept head, RoPE-shift the rest), emulated on llama.cpp's cache.",
    `LM Studio truncateMiddle: the first half of n_ctx - ${maxTokens} tokens from the prompt's head and the second ` +
    "half from its tail (our restatement: LM Studio's engine is closed; its documentation says it keeps the " +
    "beginning and the end).",
    `tome: the whole input read in chunks of 512 with eviction to ${budget} entries per layer and KV head, f16 KV; ` +
    "full keeps everything (the retrieval model retrieves by construction). A hit is the needle's five digits, " +
    `greedy, ${maxTokens} tokens.`,
  ]);
}
console.error(`load average at end: ${Deno.loadavg().join(" ")}`);
