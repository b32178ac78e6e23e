/**
 * The eviction-shaped decoder graph (DESIGN.md §3). It mirrors
 * `core/model/reference.ts` step for step, with the same names.
 *
 * Inputs (zero-copy from JavaScript):
 *   input_ids              int64 [1, S]      new tokens
 *   rope_cos, rope_sin     f32 [1, 1, S, d]  cos and sin of the new tokens' RoPE angles position·θ_i, columns
 *                                            i and i + d/2 alike (`ropeTables` in core/model/rope.ts)
 *   past_rope_cos, past_rope_sin  f32 [1, 1, R, d]  compact mode only: the same for slot indices 0..R−1,
 *                                            R ≥ every layer's capacity (each layer takes the first P_L rows)
 *   window_start           int64 [1]         queries s ≥ window_start form the observation window (≤ S − 1)
 *   past_key_L, past_value_L  [1, Hkv, P_L, d] layer L's cache buffer at its capacity P_L (f32 or f16)
 *   past_lengths           f32 [L, Hkv]      valid entries of each layer and KV head: slots at or
 *                                            past the length are masked out (any finite content)
 *   want_stats             bool []           compute the attention statistics (else each is [1, Hkv, 0])
 *   want_retain            bool []           with `retainingHeads`: compute retain_L (else [1, Hkv, 0])
 *                                            (neither with `alwaysStats`: graphs for WebGPU, no If kernel)
 * The RoPE tables are inputs, computed in JavaScript, because onnxruntime
 * 1.30's WebGPU provider has no opset-22+ Cos/Sin kernel: in the graph they
 * would run on the CPU, a device→host→device round trip per run. Full-width
 * rows (both halves alike) let `x·cos + rotate_half(x)·sin` use them as they
 * are, with no Concat per layer; they cost S·d·8 bytes a run (512 KiB at
 * S = 512, d = 128), small beside the cache fed with it. Lengths and the
 * masks made from them are float, not int64: the WebGPU provider has no int64
 * arithmetic, so int64 Range/Less/Greater would run on the CPU
 * (tests/webgpu_test.ts checks every node's placement).
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
 *   query_energy_L         f32 [1, Hkv, d]   with `queryEnergy`: Σ q² per channel over the window queries (ThinK)
 * (masked slots receive 0).
 * Every statistic is summed over the query heads of each KV head's group.
 * The statistics and the retaining heads sit in one `If` node per layer, so a
 * run that fetches none of them (decode without decode-time eviction) does not
 * compute them: onnxruntime runs every node of a graph whatever is fetched.
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
 * window-only policies (SnapKV, PyramidKV); it is left to the engine work.
 * Decode without decode-time eviction fetches no statistics, and the `If`
 * node skips them: one decode query over 4096 entries, medians of 201 runs
 * in three runs on 2 cores shared under load 9, 2.06–2.19 ms with them,
 * 1.80–1.92 ms without (1.91–2.94 ms with none in the graph: the `If` costs
 * nothing measurable); bench/decode.ts measures whole decode steps.
 */
import { type StatName, STATS } from "./stats.ts";
import { f32ToBf16, f32ToF16 } from "../../../kernels/fp16.ts";
import { type BlockQuant, quantizeBlocks, zeroPointBytes } from "../../../kernels/quant.ts";
import type { Checkpoint } from "../checkpoint.ts";
import { layerTensorNames, loadTensor } from "../checkpoint.ts";
import type { PositionMode } from "../config.ts";
import { attend, attentionShapes, shape, slotMask } from "./attention.ts";
import { readRetainingHeads, retainingHead } from "./retaining.ts";
import { float, Graph } from "./graph.ts";
import { lowBlock, lowInputs, lowIo, lowOutputs, type LowTier, queryAbsMax } from "./low_tier.ts";
import { featureOutputDecls, featureOutputs } from "./features.ts";
import { queryEnergy, queryEnergyDecls } from "./query_energy.ts";

/**
 * How the graph stores its weight matrices (the linear layers, the embedding and
 * the LM head; norms and biases stay float32). Compute is float32 except where
 * `MatMulNBits` runs with `accuracyLevel` 4 (activations quantized to int8):
 *   f32         MatMul / Gemm
 *   f16, bf16   stored at 16 bits, cast to float32 for MatMul (saves disk, see the README's table for memory)
 *   q8, q4      MatMulNBits (com.microsoft) blocks; the embedding through GatherBlockQuantized on the same
 *               blocks, the LM head a MatMulNBits (one copy when tied)
 */
export type WeightType = "f32" | "f16" | "bf16" | "q8" | "q4";
/** What `--weights` accepts: a weight type, or `auto`, the checkpoint's own precision. */
export type WeightChoice = WeightType | "auto";
export const WEIGHT_CHOICES: readonly WeightChoice[] = ["auto", "f32", "f16", "bf16", "q8", "q4"];

/** Block quantization of q8/q4 weights. */
export interface QuantOptions {
  /** Columns per block: a power of two, 16–256. */
  block: number;
  /** Symmetric (zero point 2^(bits−1), none stored) or asymmetric (a zero point per block). */
  symmetric: boolean;
  /** MatMulNBits `accuracy_level`: 0 computes in float32, 4 quantizes activations to int8 (the VNNI kernels). */
  accuracyLevel: 0 | 4;
}

/**
 * The measured default (README, "Weight types"): blocks of 128. onnxruntime repacks each block with a float32 scale
 * and a float32 block sum and keeps the scales mapped, so at 32 a block carries 12 bytes beside its 8 or 16 bytes of
 * values; at 128 the 360M shape's session is 84 MB (q8) and 92 MB (q4) smaller (`bench/mem_stages.ts`), and
 * teacher-forced quality against f32 is unchanged within the random model's noise (`bench/quality.ts`).
 */
export const DEFAULT_QUANT: QuantOptions = { block: 128, symmetric: true, accuracyLevel: 4 };

/** Options that change the graph (and so the cache key). */
export interface GraphOptions {
  positions: PositionMode;
  kvDtype: "float32" | "float16";
  weights: WeightType;
  /** For q8/q4 (default {@link DEFAULT_QUANT}). */
  quant?: QuantOptions;
  /**
   * For q8/q4 from a GGUF file: matrices whose GGML type fits the weight type unchanged (Q8_0 and Q4_0 at q8,
   * Q4_0 at q4: `kernels/gguf_blocks.ts`) take the file's own blocks of 32, bit-exact; the others are
   * re-quantized with `quant`. A graph with and without it never shares a cache entry (the options are in the key).
   */
  fileBlocks?: boolean;
  logits: "last" | "all";
  /** Locret retaining heads (a safetensors file): adds the `retain_L` outputs. */
  retainingHeads?: string;
  /**
   * No `If` switches: the statistics (and retaining heads) are computed on every run, and the graph has no
   * `want_stats`/`want_retain` inputs. For onnxruntime 1.30's WebGPU provider, which has no `If` kernel (the node
   * would run on the CPU): {@link graphOptionsFor} sets it from the execution providers.
   */
  alwaysStats?: boolean;
  /**
   * MiKV's low tier (arXiv 2402.18096, `low_tier.ts`): quantized entries fed as extra inputs, dequantized in the
   * graph, a third score block under the same softmax, with their own statistics. Original positions only.
   */
  lowTier?: LowTier;
  /** Training features (`features.ts`): adds the `qkv_L` and `attn_groupmax_L` outputs, for `tome train locret`. */
  features?: true;
  /**
   * ThinK's query factor (`query_energy.ts`): adds the `query_energy_L` outputs, Σ q² per channel over the
   * observation window, for thin keys (`--key-channels` < 1).
   */
  queryEnergy?: true;
}

/**
 * The graph options for a session on `providers`: on WebGPU without `If` switches ({@link GraphOptions.alwaysStats});
 * elsewhere unchanged (so CPU graphs keep their cache keys).
 */
export function graphOptionsFor(opts: GraphOptions, providers: readonly string[] = ["cpu"]): GraphOptions {
  return providers.includes("webgpu") ? { ...opts, alwaysStats: true } : opts;
}

export const DEFAULT_GRAPH_OPTIONS: GraphOptions = {
  positions: "original",
  kvDtype: "float32",
  weights: "f32",
  logits: "last",
};

/** The ONNX opsets the graph uses. */
export const OPSETS = { "": 23, "com.microsoft": 1 };

/**
 * The weight type `auto` stands for: the checkpoint's own precision, read from
 * its embedding's safetensors dtype (F32 → f32, F16 → f16, BF16 → bf16), so
 * nothing is rounded. On the CPU provider a 16-bit matrix is widened to
 * float32 once, when the session loads (onnxruntime folds the Cast): it halves
 * the cached graph on disk, not the memory (bench/model.ts).
 */
export function resolveWeights(ckpt: Checkpoint, choice: WeightChoice = "auto"): WeightType {
  if (choice !== "auto") return choice;
  if (ckpt.ggmlTypes) return ggufWeights(ckpt);
  const dtype = ckpt.tensors.get("model.embed_tokens.weight")?.dtype ?? "F32";
  return dtype === "F32" ? "f32" : dtype === "F16" ? "f16" : "bf16";
}

/** The tome weight type holding each GGML type's precision: 5 and 6 bits go to q8, 2 to 4 bits to q4. */
const GGML_WEIGHTS: Record<string, WeightType> = {
  F32: "f32",
  F16: "f16",
  BF16: "bf16",
  Q8_0: "q8",
  Q8_1: "q8",
  Q6_K: "q8",
  Q5_0: "q8",
  Q5_1: "q8",
  Q5_K: "q8",
  Q4_0: "q4",
  Q4_1: "q4",
  Q4_K: "q4",
  Q3_K: "q4",
  Q2_K: "q4",
};

/** `auto` for a GGUF file: the weight type of the GGML type holding most of its matrices' values. */
function ggufWeights(ckpt: Checkpoint): WeightType {
  const count = new Map<WeightType, number>();
  for (const [name, type] of ckpt.ggmlTypes!) {
    const shape = ckpt.tensors.get(name)?.shape ?? [];
    const wt = GGML_WEIGHTS[type];
    if (shape.length !== 2 || !wt) continue;
    count.set(wt, (count.get(wt) ?? 0) + shape[0] * shape[1]);
  }
  return [...count].sort((a, b) => b[1] - a[1])[0]?.[0] ?? "f32";
}

export { type StatName, STATS };

/** Names of the graph's per-layer inputs and outputs. */
export const io = {
  pastKey: (l: number) => `past_key_${l}`,
  pastValue: (l: number) => `past_value_${l}`,
  newKey: (l: number) => `new_key_${l}`,
  newValue: (l: number) => `new_value_${l}`,
  stat: (name: StatName, l: number) => `attn_${name}_${l}`,
  retain: (l: number) => `retain_${l}`,
  /** The bool scalar input that turns the statistics on. */
  wantStats: "want_stats",
  /** The bool scalar input that turns the retaining heads on (graphs with them only). */
  wantRetain: "want_retain",
};

/**
 * Builds the decoder graph for a checkpoint into `g` (weights are read one at
 * a time and written to the graph's external data).
 */
export async function buildDecoder(g: Graph, ckpt: Checkpoint, opts: GraphOptions): Promise<void> {
  const c = ckpt.config;
  const { hidden: D, heads: H, kvHeads: K, headDim: d, vocab: V } = c;
  const kvType = opts.kvDtype;

  const wt = opts.weights;
  const quant = opts.quant ?? DEFAULT_QUANT;
  const bits = wt === "q8" ? 8 : wt === "q4" ? 4 : 0;
  /** A matrix as float32, or stored at 16 bits and cast back to float32. */
  const matrix = (name: string, dims: number[], data: Float32Array) => {
    if (wt === "f16") return g.op("Cast", [g.weight(`${name}.f16`, "float16", dims, f32ToF16(data))], { to: 1 });
    if (wt === "bf16") return g.op("Cast", [g.weight(`${name}.bf16`, "bfloat16", dims, f32ToBf16(data))], { to: 1 });
    return g.weight(name, "float32", dims, data);
  };
  /**
   * A [rows, cols] matrix as MatMulNBits blocks: the GGUF file's own blocks of 32 where they fit (`fileBlocks`),
   * else quantized from float32 with `quant`.
   */
  const quantized = async (name: string, rows: number, cols: number): Promise<BlockQuant> => {
    const own = opts.fileBlocks && ckpt.readBlocks ? await ckpt.readBlocks(name, bits as 4 | 8) : null;
    if (own) return own;
    const w = await loadTensor(ckpt, name);
    return quantizeBlocks(w, rows, cols, { bits: bits as 4 | 8, block: quant.block, symmetric: quant.symmetric });
  };
  /** Block-quantized initializers: data [rows, blocks, blob], scales [rows, blocks], zero points. */
  const blocks = (name: string, q: BlockQuant) => {
    const rows = q.rows;
    const nb = q.scales.length / rows;
    return {
      q,
      data: g.weight(`${name}.q${bits}`, "uint8", [rows, nb, q.data.length / rows / nb], q.data),
      scales: g.weight(`${name}.scales`, "float32", [rows, nb], q.scales),
      zeros: q.zeroPoints
        ? g.weight(`${name}.zeros`, "uint8", [rows, zeroPointBytes(nb, bits)], q.zeroPoints)
        : undefined,
    };
  };
  type Blocks = ReturnType<typeof blocks>;
  /** x [.., K] times a quantized [N, K] matrix, transposed: MatMulNBits. */
  const matMulNBits = (x: string, b: Blocks) =>
    g.op("MatMulNBits", [x, b.data, b.scales, ...(b.zeros ? [b.zeros] : [])], {
      K: b.q.cols,
      N: b.q.rows,
      bits,
      block_size: b.q.block,
      accuracy_level: quant.accuracyLevel,
    }, { domain: "com.microsoft" });
  /** x times a linear layer's weight [out, in], transposed: MatMul on [in, out], or MatMulNBits. */
  const linear = async (x: string, name: string, out: number, inn: number) => {
    if (bits) return matMulNBits(x, blocks(name, await quantized(name, out, inn)));
    const w = await loadTensor(ckpt, name);
    const t = new Float32Array(w.length);
    for (let o = 0; o < out; o++) for (let i = 0; i < inn; i++) t[i * out + o] = w[o * inn + i];
    return g.op("MatMul", [x, matrix(`${name}.T`, [inn, out], t)]);
  };
  /** Norm weights and biases: float32 at every weight type. */
  const vector = async (name: string) => {
    const t = await loadTensor(ckpt, name);
    return g.weight(name, "float32", [t.length], t);
  };
  const rmsnorm = (x: string, w: string) => g.op("RMSNormalization", [x, w], { axis: -1, epsilon: float(c.rmsEps) });
  const toF32 = (x: string) => (kvType === "float16" ? g.op("Cast", [x], { to: 1 }) : x);
  const toKv = (x: string, out: string) =>
    kvType === "float16" ? g.op("Cast", [x], { to: 10 }, { out }) : g.op("Identity", [x], {}, { out });

  // inputs
  const ids = g.input("input_ids", "int64", [1, "S"]);
  const cos = g.input("rope_cos", "float32", [1, 1, "S", d]);
  const sin = g.input("rope_sin", "float32", [1, 1, "S", d]);
  const slotTables = opts.positions === "compact"
    ? [g.input("past_rope_cos", "float32", [1, 1, "R", d]), g.input("past_rope_sin", "float32", [1, 1, "R", d])]
    : null;
  const windowStart = g.input("window_start", "int64", [1]);
  for (let l = 0; l < c.layers; l++) {
    g.input(io.pastKey(l), kvType, [1, K, `P${l}`, d]);
    g.input(io.pastValue(l), kvType, [1, K, `P${l}`, d]);
  }
  const pastLengths = g.input("past_lengths", "float32", [c.layers, K]);
  if (opts.lowTier) {
    if (opts.positions === "compact") throw new Error("the low tier needs original positions");
    lowInputs(g, c.layers, K, d, opts.lowTier, kvType);
  }
  const wantStats = opts.alwaysStats ? null : g.input(io.wantStats, "bool", []);

  // sizes and shared tables
  const [S, SminusOne] = g.within("sizes", () => {
    const S = g.op("Gather", [g.op("Shape", [ids]), g.ints([1], [])]);
    return [S, g.op("Sub", [S, g.ints([1], [])])];
  });
  const S1 = g.op("Unsqueeze", [S, g.ints([0])]);
  /** Compact mode: the slot tables' first P_l rows, cos and sin [1, 1, P_l, d] of slots 0..P_l−1. */
  const pastTables = (l: number) =>
    g.within("rope", () => {
      const cap = g.op("Shape", [io.pastKey(l)], { start: 2, end: 3 }); // [1]
      return slotTables!.map((t) => g.op("Slice", [t, g.ints([0]), cap, g.ints([2])]));
    });
  /** RoPE, rotate-half convention: x·cos + rotate_half(x)·sin. */
  const rope = (x: string, cos: string, sin: string) =>
    g.within("rope", () => {
      const [x1, x2] = g.opN("Split", [x, g.ints([d / 2, d / 2])], 2, { axis: -1 });
      const rotated = g.op("Concat", [g.op("Neg", [x2]), x1], { axis: -1 });
      return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])]);
    });
  /** Layer l's slot indices f32 [P_l] and the additive mask [1,K,1,P_l] of its valid slots. */
  const pastSlots = (l: number) => g.within("past", () => slotMask(g, io.pastKey(l), pastLengths, l));

  const lastStart = g.op("Unsqueeze", [SminusOne, g.ints([0])]);

  const retaining = opts.retainingHeads ? await readRetainingHeads(opts.retainingHeads, c) : null;
  const wantRetain = retaining && !opts.alwaysStats ? g.input(io.wantRetain, "bool", []) : null;

  // embed: a row lookup on the table as stored (16-bit rows cast after the lookup; blocks dequantized by
  // GatherBlockQuantized), so the table is never widened to float32
  const embedName = "model.embed_tokens.weight";
  let x: string;
  let embed: string | Blocks;
  if (bits) {
    // GatherBlockQuantized reads MatMulNBits' data [V, blocks, blob] as [V, blocks, block] quantized along
    // axis 2; it wants its scales (and zero points, one a byte) shaped [V, blocks, 1], a small second copy
    const b = blocks(embedName, await quantized(embedName, V, D));
    embed = b;
    const nb = b.q.scales.length / V;
    const zeros = b.q.zeroPoints ? unpackZeros(b.q.zeroPoints, V, nb, bits) : null;
    const rowsOut = g.op(
      "GatherBlockQuantized",
      [
        b.data,
        ids,
        g.weight(`${embedName}.gather_scales`, "float32", [V, nb, 1], b.q.scales),
        ...(zeros ? [g.weight(`${embedName}.gather_zeros`, "uint8", [V, nb, 1], zeros)] : []),
      ],
      { gather_axis: 0, quantize_axis: 2, block_size: b.q.block, bits },
      { domain: "com.microsoft" },
    ); // [1,S,nb,block]
    x = g.op("Reshape", [rowsOut, g.ints([1, -1, nb * b.q.block])]);
    if (nb * b.q.block !== D) x = g.op("Slice", [x, g.ints([0]), g.ints([D]), g.ints([2])]);
  } else if (wt === "f32") {
    const embedW = await loadTensor(ckpt, embedName);
    embed = g.weight(embedName, "float32", [V, D], embedW);
    x = g.op("Gather", [embed, ids], { axis: 0 });
  } else {
    const embedW = await loadTensor(ckpt, embedName);
    const half = wt === "f16"
      ? g.weight(`${embedName}.f16`, "float16", [V, D], f32ToF16(embedW))
      : g.weight(`${embedName}.bf16`, "bfloat16", [V, D], f32ToBf16(embedW));
    embed = g.op("Cast", [half], { to: 1 });
    x = g.op("Cast", [g.op("Gather", [half, ids], { axis: 0 })], { to: 1 });
  }

  const shapes = attentionShapes(g, S, H, K, d, windowStart);
  const qHeads = shape(g, [1, S1, H, d]);
  const kvHeads = shape(g, [1, S1, K, d]);

  for (let l = 0; l < c.layers; l++) {
    const n = layerTensorNames(l);
    x = await g.within(`layer${l}`, async () => {
      // attention: RMSNorm → q, k, v projections → (Qwen3) per-head q/k RMSNorm → RoPE
      const xb = rmsnorm(x, await vector(n.attnNorm));
      const proj = async (w: string, b: string, out: number, has: boolean) => {
        const y = await linear(xb, w, out, D);
        return has ? g.op("Add", [y, await vector(b)]) : y;
      };
      const qFlat = await proj(n.wq, n.bq, H * d, c.qkvBias);
      const kFlat = await proj(n.wk, n.bk, K * d, c.qkvBias);
      const vFlat = await proj(n.wv, n.bv, K * d, c.qkvBias);
      if (retaining) {
        g.branch(
          wantRetain,
          [{ name: io.retain(l), type: "float32" }],
          () => [retainingHead(g, retaining[l], qFlat, kFlat, vFlat)],
          () => [g.floats([], [1, K, 0])],
        );
      }
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
      const qRaw = q;
      q = rope(q, cos, sin);
      k = rope(k, cos, sin);
      toKv(opts.positions === "compact" ? kRaw : k, io.newKey(l));
      toKv(v, io.newValue(l));

      // the cached keys this pass attends to, rotated
      let pastK = toF32(io.pastKey(l));
      const pastV = toF32(io.pastValue(l));
      const past = pastSlots(l);
      if (opts.positions === "compact") {
        const [cosPast, sinPast] = pastTables(l);
        pastK = rope(pastK, cosPast, sinPast);
      }

      const statNames = Object.fromEntries(STATS.map((s) => [s, io.stat(s, l)])) as Record<StatName, string>;
      if (opts.features) featureOutputs(g, shapes, l, { qFlat, kFlat, vFlat, q, k, pastK, pastMask: past.mask });
      // the queries in the cached keys' frame: unrotated in compact mode, like the keys the cache stores
      const energy = opts.queryEnergy ? [queryEnergy(g, shapes, l, opts.positions === "compact" ? qRaw : q)] : [];
      const { out, stats, lowStats } = g.within("attn", () => {
        const low = opts.lowTier
          ? lowBlock(
            g,
            l,
            d,
            opts.lowTier,
            kvType === "float16",
            Object.fromEntries(STATS.map((s) => [s, lowIo.stat(s, l)])) as Record<StatName, string>,
          )
          : undefined;
        if (low) queryAbsMax(g, q, K, d, lowIo.queryAbsMax(l));
        return attend(g, shapes, q, k, v, pastK, pastV, past.mask, statNames, wantStats, low);
      });
      let o = await linear(out, n.wo, D, H * d);
      if (c.oBias) o = g.op("Add", [o, await vector(n.bo)]);
      let h = g.op("Add", [x, o]);

      // onnxruntime orders nodes by a reverse DFS from the graph's leaves, which would run every layer's
      // statistics after the last layer and keep each layer's score blocks alive until then. Making the
      // residual stream depend on them keeps peak memory at one layer's worth.
      h = g.after(h, [...stats, ...lowStats, ...energy]);

      // MLP: RMSNorm → SwiGLU → residual
      const xm = rmsnorm(h, await vector(n.mlpNorm));
      const mlp = async (w: string, b: string, out: number, inn: number, input: string) => {
        const y = await linear(input, w, out, inn);
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
  const rows = g.op("Reshape", [x, g.ints([-1, D])]);
  let logits: string;
  if (bits) {
    // the LM head is MatMulNBits on the embedding's blocks when tied (one copy on disk), else on its own. Tied, it
    // reads them through an alias: onnxruntime repacks the head's blocks at load and unmaps what it read, while the
    // lookup's mapping keeps only the rows it touched resident (a shared initializer stays mapped whole: 47 MB at q8)
    const tied = embed as Blocks;
    const head = ckpt.tiedEmbeddings
      ? { ...tied, data: g.alias(`${embedName}.head.q${bits}`, tied.data) }
      : blocks("lm_head.weight", await quantized("lm_head.weight", V, D));
    logits = matMulNBits(rows, head);
  } else {
    const head = ckpt.tiedEmbeddings
      ? embed as string
      : matrix("lm_head.weight", [V, D], await loadTensor(ckpt, "lm_head.weight"));
    logits = g.op("Gemm", [rows, head], { transB: 1 });
  }
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
  if (opts.lowTier) lowOutputs(g, c.layers, K, d);
  if (opts.features) featureOutputDecls(g, c.layers, H, K, d);
  if (opts.queryEnergy) queryEnergyDecls(g, c.layers, K, d);
}

/** Zero points packed `bits` wide, [rows, ⌈blocks·bits/8⌉] → one a byte, [rows·blocks]. */
function unpackZeros(packed: Uint8Array, rows: number, blocks: number, bits: number): Uint8Array {
  const out = new Uint8Array(rows * blocks);
  const row = zeroPointBytes(blocks, bits);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < blocks; b++) {
      out[r * blocks + b] = bits === 8 ? packed[r * row + b] : (packed[r * row + (b >> 1)] >> ((b & 1) * 4)) & 15;
    }
  }
  return out;
}
