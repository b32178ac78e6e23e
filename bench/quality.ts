/**
 * What each weight type costs in quality, teacher-forced: the same tokens (the
 * shared corpus, SmolLM2 tokenizer) through the f32 graph and the graph at each
 * type, one pass with logits at every position; per type the mean KL(f32 ‖ type)
 * over positions, the top-1 agreement with f32, and the largest |Δ logit|.
 * Random weights at the 360M shape by default (`--model DIR` for a checkpoint).
 *
 *   deno run -A bench/quality.ts [--size 360m] [--tokens 256] [--weights f16,bf16,q8,q4,q8:32:sym:0,...]
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { graphFor } from "../core/model/cache.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from "../core/model/onnx/decoder.ts";
import { emptyPast, ModelSession } from "../core/model/session.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { parseWeightSpec } from "./weight_spec.ts";
import { report, type Row } from "./report.ts";
import { ensureRandomModel } from "./setup.ts";

const { values: args } = parseArgs({
  options: {
    size: { type: "string", default: "360m" },
    model: { type: "string" },
    tokens: { type: "string", default: "256" },
    weights: { type: "string", default: "f16,bf16,q8,q4,q8:32:sym:0,q4:32:sym:0,q4:32:asym:4,q4:128:sym:4" },
    threads: { type: "string" },
  },
});
const root = join(import.meta.dirname!, "results", "model-cache");
Deno.env.set("TOME_CACHE", join(root, "cache"));
const shared = join(import.meta.dirname!, "..", "..", "shared");
const modelDir = args.model ?? join(root, `random-${args.size}`);
await ensureRandomModel(modelDir, args.size!);
const ckpt = await openCheckpoint(modelDir);
const c = ckpt.config;
const tok = await loadTokenizer(modelDir);
const text = await Deno.readTextFile(join(shared, "corpus", "war_and_peace.txt"));
const ids = tok.encode(text.slice(100_000, 100_000 + 20 * Number(args.tokens))).slice(0, Number(args.tokens));
const threads = args.threads ? Number(args.threads) : undefined;

/** Logits [S, V] for every position in one pass. */
async function logitsAt(partial: Partial<GraphOptions>): Promise<Float32Array> {
  const opts: GraphOptions = { ...DEFAULT_GRAPH_OPTIONS, logits: "all", ...partial };
  const session = await ModelSession.open(c, opts, (await graphFor(ckpt, opts)).path, { threads });
  const r = await session.run({
    ids,
    positions: ids.map((_, i) => i),
    past: emptyPast(c, "float32"),
    fetch: { logits: true, kv: false },
  });
  await session.close();
  return r.logits!;
}

/** log-softmax of one row. */
function logSoftmax(x: Float32Array): Float64Array {
  let m = -Infinity;
  for (const v of x) m = Math.max(m, v);
  let z = 0;
  for (const v of x) z += Math.exp(v - m);
  const lz = m + Math.log(z);
  return Float64Array.from(x, (v) => v - lz);
}

const V = c.vocab;
const S = ids.length;
const reference = await logitsAt({ weights: "f32" });
const rows: Row[] = [];
for (const spec of args.weights!.split(",")) {
  const got = await logitsAt(parseWeightSpec(spec));
  let kl = 0, agree = 0, maxDelta = 0;
  for (let s = 0; s < S; s++) {
    const a = reference.subarray(s * V, (s + 1) * V);
    const b = got.subarray(s * V, (s + 1) * V);
    const la = logSoftmax(a), lb = logSoftmax(b);
    let k = 0, ia = 0, ib = 0;
    for (let v = 0; v < V; v++) {
      k += Math.exp(la[v]) * (la[v] - lb[v]);
      if (a[v] > a[ia]) ia = v;
      if (b[v] > b[ib]) ib = v;
      maxDelta = Math.max(maxDelta, Math.abs(a[v] - b[v]));
    }
    kl += k / S;
    if (ia === ib) agree++;
  }
  rows.push({ weights: spec, tokens: S, mean_kl: kl, top1_agreement: agree / S, max_abs_dlogit: maxDelta });
  console.error(JSON.stringify(rows.at(-1)));
}
await report(
  `quality-${args.model ? "model" : args.size}`,
  `deno run -A bench/quality.ts ${Deno.args.join(" ")}`.trim(),
  rows,
);
