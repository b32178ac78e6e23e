/**
 * Where the memory goes: resident memory at each stage of a read at the 360M
 * shape (random weights, SmolLM2 tokenizer), one weight type per child process
 * (the graph is built first by a child of its own, so the stages see a cached
 * graph, as every read after the first does):
 *
 *   start        the modules imported (onnxruntime not yet loaded)
 *   checkpoint   the checkpoint opened, tokenizer loaded (what loadModel reads into JavaScript)
 *   graph        the cached graph found (cache key, builder probe)
 *   session      onnxruntime's session created on it
 *   prefill      4K tokens (`--tokens`) read with snapkv at budget 1024, tome's default chunk (`--chunk`)
 *   decode       32 tokens generated
 *
 * `--until session` stops after the session; `--smaps` prints the largest resident
 * mappings there and at the end. Each stage reports VmRSS and VmHWM (`/proc/self/status`), V8's heap and the
 * memory of JavaScript buffers (`external`); `build_peak` is the peak of the
 * child that built the graph. `--fresh` has the reading child build it itself,
 * in an empty cache, as a first run does (the "graph" stage then holds the build).
 *
 * KV is float16 and the chunk tome's default for the weights (512, or 256 at q8/q4), as the CLI reads.
 *
 *   deno run -A bench/mem_stages.ts [--weights q8,q4,q8:32,…] [--size 360m] [--tokens 4096] [--chunk auto|N]
 *     [--kv float16|float32] [--session default|no-arena|no-mem-pattern|device-alloc-init|no-prepack]
 *     [--until session] [--smaps] [--fresh]
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import process from "node:process";
import { rss } from "../core/meter/rss.ts";
import { report, type Row } from "./report.ts";
import { ensureRandomModel, runChild } from "./setup.ts";
import { parseWeightSpec } from "./weight_spec.ts";
import type { Ort } from "../core/model/ort.ts";

const { values: args } = parseArgs({
  options: {
    size: { type: "string", default: "360m" },
    weights: { type: "string", default: "q8,q4" },
    tokens: { type: "string", default: "4096" },
    threads: { type: "string" },
    chunk: { type: "string", default: "auto" },
    kv: { type: "string", default: "float16" },
    session: { type: "string", default: "default" },
    until: { type: "string", default: "decode" },
    smaps: { type: "boolean", default: false },
    fresh: { type: "boolean", default: false },
    child: { type: "string" },
  },
});
const root = join(import.meta.dirname!, "results", "mem");
const shared = join(import.meta.dirname!, "..", "..", "shared");
// --fresh: the reading child builds the graph itself, in an empty cache (a first run)
Deno.env.set(
  "TOME_CACHE",
  args.fresh && args.child ? Deno.makeTempDirSync({ prefix: "tome-mem-" }) : join(root, "cache"),
);
const modelDir = join(root, `random-${args.size}`);

/** onnxruntime session option sets, by name (measured one by one). */
const SESSIONS: Record<string, Ort.InferenceSession.SessionOptions> = {
  default: {},
  "no-arena": { enableCpuMemArena: false },
  "no-mem-pattern": { enableMemPattern: false },
  "device-alloc-init": { extra: { session: { use_device_allocator_for_initializers: "1" } } },
  "no-prepack": { extra: { session: { disable_prepacking: "1" } } },
};

const mb = (b: number) => Math.round(b / 1e6);

/** Ends a child (removing the --fresh cache). */
function done(): never {
  if (args.fresh) Deno.removeSync(Deno.env.get("TOME_CACHE")!, { recursive: true });
  Deno.exit(0);
}

/** The largest resident mappings (`/proc/self/smaps`), anonymous ones summed, on stderr. */
function mappings() {
  const by = new Map<string, number>();
  let name = "";
  for (const line of Deno.readTextFileSync("/proc/self/smaps").split("\n")) {
    const head = line.match(/^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/);
    if (head) name = head[1] || "[anon]";
    const rss = line.match(/^Rss:\s+(\d+) kB/);
    if (rss) by.set(name, (by.get(name) ?? 0) + Number(rss[1]) * 1024);
  }
  const top = [...by].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k, v]) => `${mb(v)} MB ${k}`);
  console.error(top.join("\n"));
}

if (args.child) {
  const { weights, phase } = JSON.parse(args.child);
  const { loadModel, read, generate } = await import("../core/mod.ts");
  const { openCheckpoint } = await import("../core/model/checkpoint.ts");
  const { graphFor } = await import("../core/model/cache.ts");
  const { DEFAULT_GRAPH_OPTIONS } = await import("../core/model/onnx/decoder.ts");
  if (phase === "build") {
    const ckpt = await openCheckpoint(modelDir);
    const built = await graphFor(ckpt, {
      ...DEFAULT_GRAPH_OPTIONS,
      kvDtype: args.kv as "float32" | "float16",
      ...parseWeightSpec(weights),
    });
    console.log(JSON.stringify({ built: built.built, seconds: built.seconds, peak: rss().peak }));
    Deno.exit(0);
  }
  const stages: Row[] = [];
  const mark = (stage: string) => {
    const r = rss();
    const m = Deno.memoryUsage();
    const status = Deno.readTextFileSync("/proc/self/status");
    const kb = (key: string) => Number(status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, "m"))?.[1] ?? 0) * 1024;
    stages.push({
      stage,
      rss: mb(r.now),
      hwm: mb(r.peak),
      anon: mb(kb("RssAnon")),
      file: mb(kb("RssFile")),
      heap: mb(m.heapUsed),
      external: mb(m.external),
    });
  };
  mark("start");
  const spec = parseWeightSpec(weights);
  const model = await loadModel(modelDir, {
    weights: spec.weights,
    quant: spec.quant,
    kvDtype: args.kv as "float32" | "float16",
    threads: args.threads ? Number(args.threads) : undefined,
    ort: SESSIONS[args.session!],
    onStage: mark,
  });
  if (args.smaps) mappings();
  if (args.until === "session") {
    console.log(JSON.stringify({ stages, prefill_tok_s: 0, decode_tok_s: 0 }));
    done();
  }
  const book = await Deno.readTextFile(join(shared, "corpus", "war_and_peace.txt"));
  // 4.2 bytes a token: a little more text than needed, cut to the count
  const n = Number(args.tokens);
  const ids = Int32Array.from(model.tokenizer.encode(book.slice(0, n * 6))).subarray(0, n);
  const question = model.tokenizer.encode("What is the pass code of Natasha?");
  mark("loaded");
  const cpu = () => (process.cpuUsage().user + process.cpuUsage().system) / 1e6;
  const c0 = cpu();
  const t0 = performance.now();
  const chunk = args.chunk === "auto" ? undefined : Number(args.chunk);
  const state = await read({ ids }, { model, policy: "snapkv", budget: 1024, chunk, question });
  const prefill = (performance.now() - t0) / 1000;
  const prefillCpu = cpu() - c0;
  mark("prefill");
  const t1 = performance.now();
  let generated = 0;
  for await (const _ of generate(state, { suffix: question, maxTokens: 32, sampling: { temperature: 0 }, eos: [] })) {
    generated++;
  }
  const decode = (performance.now() - t1) / 1000;
  mark("decode");
  if (args.smaps) mappings();
  console.log(
    JSON.stringify({
      stages,
      prefill_tok_s: Math.round(ids.length / prefill),
      prefill_cpu_s: prefillCpu,
      decode_tok_s: generated / decode,
    }),
  );
  done();
}

await Deno.mkdir(root, { recursive: true });
await ensureRandomModel(modelDir, args.size!);
// deno-lint-ignore no-explicit-any
const child = (job: object) => runChild<any>(import.meta.filename!, job);
const rows: Row[] = [];
for (const weights of args.weights!.split(",")) {
  const build = args.fresh ? { built: false } : await child({ weights, phase: "build" });
  const run = await child({ weights, phase: "run" });
  const row: Row = {
    weights,
    options: `${args.session} kv ${args.kv} chunk ${args.chunk}`,
    build_peak: build.built ? mb(build.peak) : null,
  };
  for (const s of run.stages) {
    row[`${s.stage}`] = `${s.rss}/${s.hwm} (anon ${s.anon} file ${s.file} heap ${s.heap} ext ${s.external})`;
  }
  row.prefill_tok_s = run.prefill_tok_s;
  row.prefill_cpu_s = Number((run.prefill_cpu_s ?? 0).toFixed(1));
  row.decode_tok_s = Number(run.decode_tok_s.toFixed(1));
  console.error(JSON.stringify(row));
  rows.push(row);
}
await report(`mem-stages-${args.size}`, `deno run -A bench/mem_stages.ts ${Deno.args.join(" ")}`.trim(), rows);
