/**
 * The eviction-shaped decoder graph (DESIGN.md §3). It mirrors
 * `core/model/reference.ts` step for step, with the same names.
 *
 * Inputs (zero-copy from JavaScript):
 *   input_ids              int64 [1, S]      new tokens
 *   positions              f32 [1, S]        their RoPE positions (integers, exact below 2^24)
 *   window_start           int64 [1]         queries s ≥ window_start form the observation window (≤ S − 1)
 *   past_key_L, past_value_L  [1, Hkv, P_L, d] layer L's cache buffer at its capacity P_L (f32 or f16)
 *   past_lengths           f32 [L, Hkv]      valid entries of each layer and KV head: slots at or
 *                                            past the length are masked out (any finite content)
 * Positions, lengths and the masks made from them are float, not int64: the
 * WebGPU provider has no int64 arithmetic, so int64 Range/Less/Greater would
 * run on the CPU (tests/webgpu_test.ts checks every node's placement).
 * A fixed capacity per layer means the engine hands its buffers over as they
 * are in every phase (warm-up, steady prefill, decode, per-head budgets) and
 * compacts them in place. In compact mode a cached key is rotated to its slot
 * index; the engine gives new tokens positions from the filled length on.
 * Outputs (copied back, so never the whole cache):
 *   logits                 f32 [1, 1 | S, V] last position, or all with `logits: "all"`
 *   new_key_L, new_value_L [1, Hkv, S, d]    this chunk's K/V (keys unrotated in compact mode)
 *   attn_window_L          f32 [1, Hkv, P_L+S] softmax mass each entry receives from the window queries
 *   attn_all_L             f32 [1, Hkv, P_L+S] … from all S queries
 *   attn_max_L             f32 [1, Hkv, P_L+S] max over window queries of the mass on each entry
 *   attn_last_L            f32 [1, Hkv, P_L+S] … from the last query
 *   retain_L               f32 [1, Hkv, S]   with `retainingHeads`: Locret's importance of each new token
 * (masked slots receive 0).
 * Every statistic is summed over the query heads of each KV head's group.
 *
 * Attention (`attention.ts`) is computed against past and new keys
 * separately — one softmax over both score blocks, never concatenating K or V.
 *
 * Why primitive ops, by measurement (`deno run -A bench/attention.ts`: one
 * layer at 360M shapes, 512 queries over 4096 past, 2 cores, three runs): this
 * block with the four statistics 87–110 ms, without them 87–99 ms,
 * com.microsoft GroupQueryAttention 62–84 ms, opset-23 Attention 64–68 ms; one
 * decode query (`--chunk 1`): 1.7 ms, 0.8 ms without statistics, 1.7 ms, 1.8 ms.
 * The fused ops return
 * neither the statistics nor the probabilities behind them (GQA's qk_output
 * materializes all [H, S, P+S] probabilities, which is what the two-block
 * softmax avoids), and both return the concatenated cache. A hybrid — fused
 * attention for the output, scores for the window rows only — would suit the
 * window-only policies (SnapKV, PyramidKV), and a graph without statistics
 * suits decode; both are left to the engine work.
 */
import { type StatName, STATS } from "./stats.ts";
import { f32ToF16 } from "../../../kernels/fp16.ts";
import type { Checkpoint } from "../checkpoint.ts";
import { layerTensorNames, loadTensor } from "../checkpoint.ts";
import type { PositionMode } from "../config.ts";
import { inverseFrequencies } from "../rope.ts";
import { attend, attentionShapes, shape } from "./attention.ts";
import { readRetainingHeads, retainingHead } from "./retaining.ts";
import { float, Graph } from "./graph.ts";

/** Options that change the graph (and so the cache key). */
export interface GraphOptions {
  positions: PositionMode;
  kvDtype: "float32" | "float16";
  weightDtype: "float32" | "float16";
  logits: "last" | "all";
  /** Locret retaining heads (a safetensors file): adds the `retain_L` outputs. */
  retainingHeads?: string;
}

export const DEFAULT_GRAPH_OPTIONS: GraphOptions = {
  positions: "original",
  kvDtype: "float32",
  weightDtype: "float32",
  logits: "last",
};

/** The ONNX opsets the graph uses. */
export const OPSETS = { "": 23 };

export { type StatName, STATS };

/** Names of the graph's per-layer inputs and outputs. */
export const io = {
  pastKey: (l: number) => `past_key_${l}`,
  pastValue: (l: number) => `past_value_${l}`,
  newKey: (l: number) => `new_key_${l}`,
  newValue: (l: number) => `new_value_${l}`,
  stat: (name: StatName, l: number) => `attn_${name}_${l}`,
  retain: (l: number) => `retain_${l}`,
};

/**
 * Builds the decoder graph for a checkpoint into `g` (weights are read one at
 * a time and written to the graph's external data).
 */
export async function buildDecoder(g: Graph, ckpt: Checkpoint, opts: GraphOptions): Promise<void> {
  const c = ckpt.config;
  const { hidden: D, heads: H, kvHeads: K, headDim: d, vocab: V } = c;
  const kvType = opts.kvDtype;

  /** A linear layer's weight, transposed to [in, out] for MatMul. */
  const linearWeight = async (name: string, out: number, inn: number) => {
    const w = await loadTensor(ckpt, name);
    const t = new Float32Array(w.length);
    for (let o = 0; o < out; o++) for (let i = 0; i < inn; i++) t[i * out + o] = w[o * inn + i];
    return weight(`${name}.T`, [inn, out], t);
  };
  /** A weight as float32, or stored as float16 and cast back when `weightDtype` is float16. */
  const weight = (name: string, dims: number[], data: Float32Array) => {
    if (opts.weightDtype === "float32") return g.weight(name, "float32", dims, data);
    const half = g.weight(`${name}.f16`, "float16", dims, f32ToF16(data));
    return g.op("Cast", [half], { to: 1 });
  };
  const vector = async (name: string) => {
    const t = await loadTensor(ckpt, name);
    return weight(name, [t.length], t);
  };
  const rmsnorm = (x: string, w: string) => g.op("RMSNormalization", [x, w], { axis: -1, epsilon: float(c.rmsEps) });
  const toF32 = (x: string) => (kvType === "float16" ? g.op("Cast", [x], { to: 1 }) : x);
  const toKv = (x: string, out: string) =>
    kvType === "float16" ? g.op("Cast", [x], { to: 10 }, { out }) : g.op("Identity", [x], {}, { out });

  // inputs
  const ids = g.input("input_ids", "int64", [1, "S"]);
  const positions = g.input("positions", "float32", [1, "S"]);
  const windowStart = g.input("window_start", "int64", [1]);
  for (let l = 0; l < c.layers; l++) {
    g.input(io.pastKey(l), kvType, [1, K, `P${l}`, d]);
    g.input(io.pastValue(l), kvType, [1, K, `P${l}`, d]);
  }
  const pastLengths = g.input("past_lengths", "float32", [c.layers, K]);

  // sizes and shared tables
  const [S, SminusOne] = g.within("sizes", () => {
    const S = g.op("Gather", [g.op("Shape", [ids]), g.ints([1], [])]);
    return [S, g.op("Sub", [S, g.ints([1], [])])];
  });
  const S1 = g.op("Unsqueeze", [S, g.ints([0])]);
  const inv = g.weight("rope.inv_freq", "float32", [d / 2], inverseFrequencies(c));
  /** cos and sin [1, 1, n, d] of positions f32 [1, n]. */
  const ropeTables = (pos: string) =>
    g.within("rope", () => {
      const angles = g.op("Mul", [g.op("Unsqueeze", [pos, g.ints([-1])]), inv]); // [1,n,d/2]
      const emb = g.op("Unsqueeze", [g.op("Concat", [angles, angles], { axis: -1 }), g.ints([1])]); // [1,1,n,d]
      return [g.op("Cos", [emb]), g.op("Sin", [emb])];
    });
  /** RoPE, rotate-half convention: x·cos + rotate_half(x)·sin. */
  const rope = (x: string, cos: string, sin: string) =>
    g.within("rope", () => {
      const [x1, x2] = g.opN("Split", [x, g.ints([d / 2, d / 2])], 2, { axis: -1 });
      const rotated = g.op("Concat", [g.op("Neg", [x2]), x1], { axis: -1 });
      return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])]);
    });
  const [cos, sin] = ropeTables(positions);
  /** Layer l's slot indices f32 [P_l] and the additive mask [1,K,1,P_l] of its valid slots. */
  const pastSlots = (l: number) =>
    g.within("past", () => {
      const cap = g.op("Cast", [g.op("Gather", [g.op("Shape", [io.pastKey(l)]), g.ints([2], [])])], { to: 1 });
      const slots = g.op("Range", [g.floats([0], []), cap, g.floats([1], [])]);
      const lengths = g.op("Unsqueeze", [g.op("Gather", [pastLengths, g.ints([l], [])], { axis: 0 }), g.ints([1])]); // [K,1]
      const valid = g.op("Less", [g.op("Unsqueeze", [slots, g.ints([0])]), lengths]); // [K,P]
      const mask = g.op("Unsqueeze", [
        g.op("Where", [valid, g.floats([0], []), g.floats([-Infinity], [])]),
        g.ints([0, 2]),
      ]);
      return { slots, mask };
    });

  const lastStart = g.op("Unsqueeze", [SminusOne, g.ints([0])]);

  const retaining = opts.retainingHeads ? await readRetainingHeads(opts.retainingHeads, c) : null;

  // embed
  const embed = g.weight(
    "model.embed_tokens.weight",
    "float32",
    [V, D],
    await loadTensor(ckpt, "model.embed_tokens.weight"),
  );
  let x = g.op("Gather", [embed, ids], { axis: 0 }); // [1,S,D]

  const shapes = attentionShapes(g, S, H, K, d, windowStart);
  const qHeads = shape(g, [1, S1, H, d]);
  const kvHeads = shape(g, [1, S1, K, d]);

  for (let l = 0; l < c.layers; l++) {
    const n = layerTensorNames(l);
    x = await g.within(`layer${l}`, async () => {
      // attention: RMSNorm → q, k, v projections → (Qwen3) per-head q/k RMSNorm → RoPE
      const xb = rmsnorm(x, await vector(n.attnNorm));
      const proj = async (w: string, b: string, out: number, has: boolean) => {
        const y = g.op("MatMul", [xb, await linearWeight(w, out, D)]);
        return has ? g.op("Add", [y, await vector(b)]) : y;
      };
      const qFlat = await proj(n.wq, n.bq, H * d, c.qkvBias);
      const kFlat = await proj(n.wk, n.bk, K * d, c.qkvBias);
      const vFlat = await proj(n.wv, n.bv, K * d, c.qkvBias);
      if (retaining) retainingHead(g, retaining[l], qFlat, kFlat, vFlat, io.retain(l));
      let q = g.op("Transpose", [g.op("Reshape", [qFlat, qHeads])], {
        perm: [0, 2, 1, 3],
      });
      let k = g.op("Transpose", [g.op("Reshape", [kFlat, kvHeads])], {
        perm: [0, 2, 1, 3],
      });
      const v = g.op("Transpose", [g.op("Reshape", [vFlat, kvHeads])], {
        perm: [0, 2, 1, 3],
      });
      if (c.qkNorm) {
        q = rmsnorm(q, await vector(n.qNorm));
        k = rmsnorm(k, await vector(n.kNorm));
      }
      const kRaw = k;
      q = rope(q, cos, sin);
      k = rope(k, cos, sin);
      toKv(opts.positions === "compact" ? kRaw : k, io.newKey(l));
      toKv(v, io.newValue(l));

      // the cached keys this pass attends to, rotated
      let pastK = toF32(io.pastKey(l));
      const pastV = toF32(io.pastValue(l));
      const past = pastSlots(l);
      if (opts.positions === "compact") {
        const [cosPast, sinPast] = ropeTables(g.op("Unsqueeze", [past.slots, g.ints([0])]));
        pastK = rope(pastK, cosPast, sinPast);
      }

      const statNames = Object.fromEntries(STATS.map((s) => [s, io.stat(s, l)])) as Record<StatName, string>;
      const { out, stats } = attend(g, shapes, q, k, v, pastK, pastV, past.mask, statNames);
      let o = g.op("MatMul", [out, await linearWeight(n.wo, D, H * d)]);
      if (c.oBias) o = g.op("Add", [o, await vector(n.bo)]);
      let h = g.op("Add", [x, o]);

      // onnxruntime orders nodes by a reverse DFS from the graph's leaves, which would run every layer's
      // statistics after the last layer and keep each layer's score blocks alive until then. Making the
      // residual stream depend on them keeps peak memory at one layer's worth.
      h = g.after(h, stats);

      // MLP: RMSNorm → SwiGLU → residual
      const xm = rmsnorm(h, await vector(n.mlpNorm));
      const mlp = async (w: string, b: string, out: number, inn: number, input: string) => {
        const y = g.op("MatMul", [input, await linearWeight(w, out, inn)]);
        return c.mlpBias ? g.op("Add", [y, await vector(b)]) : y;
      };
      const gate = await mlp(n.wGate, n.bGate, c.intermediate, D, xm);
      const up = await mlp(n.wUp, n.bUp, c.intermediate, D, xm);
      const act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up]);
      return g.op("Add", [h, await mlp(n.wDown, n.bDown, D, c.intermediate, act)]);
    });
  }

  // final norm → logits (last position, or all); the output projection is the embedding when tied
  x = rmsnorm(x, await vector("model.norm.weight"));
  if (opts.logits === "last") x = g.op("Slice", [x, lastStart, g.op("Unsqueeze", [S, g.ints([0])]), g.ints([1])]);
  const head = ckpt.tiedEmbeddings
    ? embed
    : g.weight("lm_head.weight", "float32", [V, D], await loadTensor(ckpt, "lm_head.weight"));
  const rows = g.op("Reshape", [x, g.ints([-1, D])]);
  const logits = g.op("Gemm", [rows, head], { transB: 1 });
  g.op("Reshape", [logits, shape(g, [1, -1, V])], {}, { out: "logits" });

  for (let l = 0; l < c.layers; l++) {
    g.output(io.newKey(l), kvType, [1, K, "S", d]);
    g.output(io.newValue(l), kvType, [1, K, "S", d]);
  }
  for (let l = 0; l < c.layers; l++) {
    for (const s of STATS) g.output(io.stat(s, l), "float32", [1, K, "T"]);
  }
  g.output("logits", "float32", [1, opts.logits === "last" ? 1 : "S", V]);
  if (retaining) { for (let l = 0; l < c.layers; l++) g.output(io.retain(l), "float32", [1, K, "S"]); }
}
