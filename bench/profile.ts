/**
 * Where prefill time goes, by onnxruntime's own profiler: the 360M shape
 * (random weights) reads `--tokens` tokens of the corpus with snapkv at budget
 * 1024, with the session's profiling on; the kernel times of every node are
 * summed by what the node does:
 *   weights      the projections and the LM head (MatMul on an initializer, MatMulNBits, Gather*Quantized)
 *   attention    scores, softmax and the weighted sum over past and new entries (`attn` scope)
 *   statistics   the attention statistics the policy scores by (`stats` scope, inside the If)
 *   other        norms, RoPE, MLP activations, casts, masks, shapes
 * Run once per weight type, each in its own process (the first chunk's
 * warm-up is excluded: profiling starts after it).
 *
 *   deno run -A bench/profile.ts [--weights f32,q8,q4] [--tokens 4096] [--chunk auto] [--threads 2]
 *
 * Prints a table (the share of kernel time per part, and what the weight
 * products would allow if the rest cost nothing) and writes
 * bench/results/profile.json.
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { loadModel, read } from "../core/mod.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import type { WeightChoice } from "../core/model/onnx/decoder.ts";
import { report, type Row } from "./report.ts";
import { ensureRandomModel, runChild, SHARED, TOKENIZER } from "./setup.ts";

const { values: args } = parseArgs({
  options: {
    weights: { type: "string", default: "f32,q8,q4" },
    tokens: { type: "string", default: "4096" },
    chunk: { type: "string", default: "auto" },
    threads: { type: "string", default: "2" },
    size: { type: "string", default: "360m" },
    child: { type: "string" },
  },
});
const root = join(import.meta.dirname!, "results", "profile");
Deno.env.set("TOME_CACHE", join(root, "cache"));
const modelDir = join(root, `random-${args.size}`);

/** The part of the model a node belongs to, from its op type, its inputs and its scope. */
export function part(name: string, op: string): "weights" | "attention" | "statistics" | "other" {
  if (name.includes("/stats/")) return "statistics";
  if (name.includes("/attn/")) return "attention";
  // outside attention every matrix product has a weight matrix for its second operand
  if (/^(MatMulNBits|GatherBlockQuantized|MatMul|FusedMatMul|Gemm)$/.test(op)) return "weights";
  return "other";
}

interface Event {
  cat?: string;
  name?: string;
  dur?: number;
  args?: { op_name?: string };
}

interface Result {
  weights: string;
  chunk: number;
  tokens: number;
  seconds: number;
  kernelMs: Record<string, number>;
  byOp: Record<string, number>;
}

async function child(weights: string): Promise<Result> {
  await ensureRandomModel(modelDir, args.size!);
  const tok = await loadTokenizer(TOKENIZER);
  const text = await Deno.readTextFile(join(SHARED, "corpus", "war_and_peace.txt"));
  const book = tok.encode(text.slice(0, Number(args.tokens) * 8));
  const n = Number(args.tokens);
  const prefix = join(root, `trace-${weights}`);
  const model = await loadModel(modelDir, {
    weights: weights as WeightChoice,
    threads: Number(args.threads),
    ort: { enableProfiling: true, profileFilePrefix: prefix },
  });
  const question = tok.encode("What is the pass code of Natasha?");
  const chunk = args.chunk === "auto" ? undefined : Number(args.chunk);
  const t0 = performance.now();
  const state = await read({ ids: book.slice(0, n) }, { model, policy: "snapkv", budget: 1024, chunk, question });
  const seconds = (performance.now() - t0) / 1000;
  // onnxruntime writes the trace (PREFIX_DATE.json) when profiling ends
  const inner = (model.session as unknown as { session: { endProfiling(): void } }).session;
  inner.endProfiling();
  const traces = [...Deno.readDirSync(root)].map((e) => e.name)
    .filter((n) => n.startsWith(`trace-${weights}`) && n.endsWith(".json")).sort();
  if (traces.length === 0) throw new Error(`no trace ${prefix}_*.json`);
  const file = join(root, traces.at(-1)!);
  const events = JSON.parse(await Deno.readTextFile(file)) as Event[];
  for (const t of traces) await Deno.remove(join(root, t));
  const kernelMs: Record<string, number> = { weights: 0, attention: 0, statistics: 0, other: 0 };
  const byOp: Record<string, number> = {};
  // the runs' node events; the first run (warm-up, graph-level allocations) is left out
  let runs = 0;
  for (const e of events) {
    if (e.cat === "Session" && e.name === "model_run") runs++;
    if (runs < 1 || e.cat !== "Node" || !e.name?.endsWith("_kernel_time") || !e.dur) continue;
    const name = e.name.slice(0, -"_kernel_time".length);
    const op = e.args?.op_name ?? "";
    if (op === "If") continue; // its time is its branch's nodes', counted one by one
    kernelMs[part(name, op)] += e.dur / 1000;
    byOp[op] = (byOp[op] ?? 0) + e.dur / 1000;
  }
  await model.session.close();
  return { weights: model.graph.weights, chunk: state.chunk, tokens: n, seconds, kernelMs, byOp };
}

if (args.child) {
  console.log(JSON.stringify(await child(JSON.parse(args.child).weights)));
} else {
  const rows: Row[] = [];
  for (const weights of args.weights!.split(",")) {
    const r = await runChild<Result>(import.meta.filename!, { weights });
    const total = Object.values(r.kernelMs).reduce((a, b) => a + b, 0);
    const share = (k: string) => `${(100 * r.kernelMs[k] / total).toFixed(1)}%`;
    const top = Object.entries(r.byOp).sort((a, b) => b[1] - a[1]).slice(0, 4)
      .map(([op, ms]) => `${op} ${(100 * ms / total).toFixed(0)}%`).join(", ");
    rows.push({
      weights: r.weights,
      chunk: r.chunk,
      tokens: r.tokens,
      "prefill tok/s": Math.round(r.tokens / r.seconds),
      "kernel s": +(total / 1000).toFixed(1),
      weights_share: share("weights"),
      attention_share: share("attention"),
      statistics_share: share("statistics"),
      other_share: share("other"),
      "tok/s if only weights": Math.round(r.tokens / (r.kernelMs.weights / 1000)),
      "top ops": top,
    });
  }
  await report("profile", `deno run -A bench/profile.ts ${Deno.args.join(" ")}`.trim(), rows);
}
