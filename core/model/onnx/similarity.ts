/**
 * The similarity search of the mergers (D2O, EMS) as one matrix product per
 * layer: every KV head's unit-length query rows [K, E, d] against its unit
 * candidate rows [K, C, d] (padded to the layer's longest, the padding masked
 * by a bias of −3e38) in a small onnxruntime graph, MatMul then TopK(2) over
 * the candidates — onnxruntime's MLAS does the E·C·d multiply-adds per head
 * many times faster than a JavaScript loop. What comes back is approximate
 * (float32 sums); `kernels/nearest.ts` settles each query exactly, so the
 * result is the brute-force search's, index and similarity, ties included.
 * The session is built once per process, on first use.
 */
import { type Nearest, type NearestSearch, searchMargin, settleNearest } from "../../../kernels/nearest.ts";
import { type Ort, ort } from "../ort.ts";
import { Graph } from "./graph.ts";

/** The bias that masks a padded candidate out of the top two. */
const MASKED = -3e38;

let session: Promise<Ort.InferenceSession> | null = null;

/** The graph: s = q·cᵀ + bias, [K, E, C]; its top two along C, values and indices. */
function searchGraph(): Uint8Array {
  const g = new Graph();
  const q = g.input("queries", "float32", ["K", "E", "D"]);
  const c = g.input("candidates", "float32", ["K", "C", "D"]);
  const bias = g.input("bias", "float32", ["K", 1, "C"]);
  const s = g.op("Add", [g.op("MatMul", [q, g.op("Transpose", [c], { perm: [0, 2, 1] })]), bias]);
  const [values, indices] = g.opN("TopK", [s, g.ints([2])], 2, { axis: -1, largest: 1, sorted: 1 });
  g.op("Identity", [values], {}, { out: "values" });
  g.op("Identity", [indices], {}, { out: "indices" });
  g.output("values", "float32", ["K", "E", 2]);
  g.output("indices", "int64", ["K", "E", 2]);
  return g.encode({ "": 17 });
}

async function open(): Promise<Ort.InferenceSession> {
  const o = await ort();
  return await o.InferenceSession.create(searchGraph(), {
    graphOptimizationLevel: "all",
    logSeverityLevel: 3,
    // its threads sleep when a search ends instead of spinning: the merge that follows runs in JavaScript
    extra: { session: { intra_op: { allow_spinning: "0" } } },
  });
}

/**
 * Each head's nearest candidate per query, exactly as the brute-force search
 * over `exact` finds it (the first of equals on ties). Heads without queries
 * or candidates get empty or unmatched (−1, −Infinity) results.
 */
export async function nearestAll(heads: NearestSearch[], d: number): Promise<Nearest[]> {
  const K = heads.length;
  const E = Math.max(1, ...heads.map((h) => h.queries.length));
  // TopK(2) needs two columns; a lone candidate is settled without its second
  const C = Math.max(2, ...heads.map((h) => h.candidates.length));
  const q = new Float32Array(K * E * d);
  const c = new Float32Array(K * C * d);
  const bias = new Float32Array(K * C).fill(MASKED);
  heads.forEach((h, k) => {
    copyRows(h.unit, h.queries, d, q, k * E);
    copyRows(h.unit, h.candidates, d, c, k * C);
    bias.fill(0, k * C, k * C + h.candidates.length);
  });
  const o = await ort();
  session ??= open();
  const out = await (await session).run({
    queries: new o.Tensor("float32", q, [K, E, d]),
    candidates: new o.Tensor("float32", c, [K, C, d]),
    bias: new o.Tensor("float32", bias, [K, 1, C]),
  });
  const values = out.values.data as Float32Array;
  const indices = out.indices.data as BigInt64Array;
  const margin = searchMargin(d);
  return heads.map((h, k) => {
    const n = h.queries.length;
    const best = new Int32Array(n), first = new Float32Array(n), second = new Float32Array(n);
    for (let e = 0; e < n; e++) {
      const at = (k * E + e) * 2;
      best[e] = Number(indices[at]);
      first[e] = values[at];
      second[e] = values[at + 1];
    }
    return settleNearest(h.queries, h.candidates, best, first, second, margin, h.exact);
  });
}

/** Rows `rows` of `src` ([·, d]) into `dst` from row `at` on, in order. */
function copyRows(src: Float32Array, rows: Int32Array, d: number, dst: Float32Array, at: number): void {
  for (let r = 0, o = at * d; r < rows.length; r++) {
    for (let t = 0, f = rows[r] * d; t < d; t++, o++) dst[o] = src[f + t];
  }
}
