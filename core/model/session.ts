/**
 * A built decoder graph in an onnxruntime session. `run` takes a chunk of
 * token ids and the retained cache (zero-copy) and returns only what is asked
 * for: onnxruntime copies every fetched output back into JavaScript.
 */
import type { ModelConfig } from "./config.ts";
import { type GraphOptions, io, type StatName } from "./onnx/decoder.ts";
import { type Ort, ort } from "./ort.ts";
import { TomeError } from "../errors.ts";
import { quietStderr } from "./quiet.ts";
import { WEBGPU_HINT } from "./device.ts";
import { inverseFrequencies, type RopeTables, ropeTables } from "./rope.ts";
import { lowBits, lowIo } from "./onnx/low_tier.ts";
import { queryEnergyIo } from "./onnx/query_energy.ts";

/** KV data as the graph takes it: float32, or float16 bit patterns. */
export type KvArray = Float32Array | Uint16Array;

/**
 * The cache handed to one run, as the engine holds it: per layer a buffer
 * [Hkv, capacity, d] for keys and one for values (capacity = length / (Hkv·d);
 * layers may differ), and the valid entries of each layer and KV head.
 */
export interface PastKv {
  keys: KvArray[];
  values: KvArray[];
  /** [layers · Hkv], row-major: entries 0..length−1 of each head are valid. */
  lengths: ArrayLike<number>;
}

/** An empty cache for a model: zero-capacity buffers, zero lengths. */
export function emptyPast(config: ModelConfig, kvDtype: "float32" | "float16"): PastKv {
  const make = () => (kvDtype === "float32" ? new Float32Array(0) : new Uint16Array(0));
  return {
    keys: Array.from({ length: config.layers }, make),
    values: Array.from({ length: config.layers }, make),
    lengths: new Array(config.layers * config.kvHeads).fill(0),
  };
}

export type { StatName };

/** One layer's low-tier keys or values as `kernels/kv_quant.ts` stores them, [Hkv, capacity, ·] each. */
export interface LowRows {
  /** [Hkv, capacity, d·bits/8] packed values. */
  data: Uint8Array;
  /** [Hkv, capacity, d/group] steps and mins: float32, or float16 bit patterns with a float16 cache. */
  scales: KvArray;
  mins: KvArray;
}

/**
 * MiKV's low tier handed to one run (graphs built with `lowTier` only): per layer the quantized keys
 * (balanced: stored as k / b) and values, the balancer b [Hkv·d], and the valid entries of each head.
 */
export interface LowPast {
  keys: LowRows[];
  values: LowRows[];
  /** Per layer [Hkv, d]: the balancer's factors (ones for none). */
  balance: Float32Array[];
  /** [layers · Hkv], row-major. */
  lengths: ArrayLike<number>;
}

export interface RunRequest {
  ids: ArrayLike<number>;
  /** Each token's RoPE position: `run` feeds the graph their cos/sin tables (`ropeTables`). */
  positions: ArrayLike<number>;
  past: PastKv;
  /** The low tier (graphs built with `lowTier`; default: empty). */
  low?: LowPast;
  /** First query of the observation window (default: the last query). */
  windowStart?: number;
  /** What to fetch: logits (default true), new K/V (default true), which statistics (default none), retaining-head scores. */
  fetch?: {
    logits?: boolean;
    kv?: boolean;
    stats?: StatName[];
    retain?: boolean;
    queryAbsMax?: boolean;
    /** Graphs built with `queryEnergy`: each layer's window query energy (ThinK). */
    queryEnergy?: boolean;
    outputs?: string[];
  };
}

export interface RunResult {
  /** [1 | S, vocab] */
  logits?: Float32Array;
  /** Per layer [Hkv, S, d]. */
  newKeys: KvArray[];
  newValues: KvArray[];
  /** Per statistic, per layer [Hkv, P + S]. */
  stats: Partial<Record<StatName, Float32Array[]>>;
  /** Locret graphs: per layer the retaining heads' score of each new token, [Hkv, S]. */
  retain?: Float32Array[];
  /** Low-tier graphs: per statistic asked for, per layer [Hkv, Q] over the low entries. */
  lowStats?: Partial<Record<StatName, Float32Array[]>>;
  /** Low-tier graphs, with `fetch.queryAbsMax`: per layer max |q_i| over the chunk of each KV head's group, [Hkv, d]. */
  queryAbsMax?: Float32Array[];
  /**
   * Graphs built with `queryEnergy`, with `fetch.queryEnergy`: per layer Σ q[s, i]² over the observation-window
   * queries and each KV head's query group, [Hkv, d] (ThinK's query factor, squared).
   */
  queryEnergy?: Float32Array[];
  /** Further float32 outputs fetched by name (`fetch.outputs`: the training features of `GraphOptions.features`). */
  outputs?: Record<string, Float32Array>;
}

export interface SessionOptions {
  /** Intra-op threads (default: onnxruntime's choice). */
  threads?: number;
  executionProviders?: string[];
  /** Further onnxruntime session options (measured in bench/model.ts: arena, memory pattern). */
  ort?: Ort.InferenceSession.SessionOptions;
}

/**
 * onnxruntime's log levels for a session: silent (fatal only) unless
 * TOME_DEBUG is set, then verbose (which includes each node's placement).
 * Errors still reach the caller as exceptions.
 */
export function logOptions(): { logSeverityLevel: 0 | 4; logVerbosityLevel: number } {
  return Deno.env.get("TOME_DEBUG") ? { logSeverityLevel: 0, logVerbosityLevel: 0 } : {
    logSeverityLevel: 4,
    logVerbosityLevel: 0,
  };
}

/** Statistics [K, 1 + S] of a padded layer without the padding slot: [K, S]. */
function dropFirstSlot(a: Float32Array, K: number): Float32Array {
  const T = a.length / K;
  const out = new Float32Array(K * (T - 1));
  for (let h = 0; h < K; h++) out.set(a.subarray(h * T + 1, (h + 1) * T), h * (T - 1));
  return out;
}

/** int64 tensor data without intermediate arrays (this runs for every chunk and token). */
function int64(values: ArrayLike<number>): BigInt64Array {
  const out = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = BigInt(values[i]);
  return out;
}

/**
 * One onnxruntime session over a built graph. `run` feeds token ids, the RoPE
 * tables of their positions and the retained cache (zero-copy) and fetches
 * only the outputs asked for.
 *
 * @example
 * const session = await ModelSession.open(config, graph, "model.onnx");
 * const r = await session.run({ ids, positions, past: emptyPast(config, "float32"), fetch: { logits: true } });
 */
export class ModelSession {
  private constructor(
    readonly config: ModelConfig,
    readonly graph: GraphOptions,
    private readonly ort: typeof Ort,
    private readonly session: Ort.InferenceSession,
    /** Feed one masked slot for an empty layer: the WebGPU provider rejects reductions over empty tensors. */
    private readonly padEmpty = false,
  ) {}
  #kvFedPeak = 0;
  #inv?: Float32Array;
  #slots?: RopeTables;

  /** The RoPE tables of `positions`, [n, d] each. */
  #rope(positions: ArrayLike<number>): RopeTables {
    this.#inv ??= inverseFrequencies(this.config);
    return ropeTables(positions, this.#inv);
  }

  /** Compact mode: the tables of slot indices 0..n−1, kept from run to run and grown as capacities grow. */
  #slotTables(n: number): RopeTables {
    const d = this.config.headDim;
    if (!this.#slots || this.#slots.cos.length < n * d) {
      this.#slots = this.#rope(Array.from({ length: n }, (_, i) => i));
    }
    return { cos: this.#slots.cos.subarray(0, n * d), sin: this.#slots.sin.subarray(0, n * d) };
  }

  /** Opens a built graph (`model.onnx` with its external data beside it). */
  static async open(
    config: ModelConfig,
    graph: GraphOptions,
    path: string,
    opts: SessionOptions = {},
  ): Promise<ModelSession> {
    const o = await ort();
    const providers = opts.executionProviders ?? ["cpu"];
    const log = logOptions();
    if (!Deno.env.get("TOME_DEBUG")) o.env.logLevel = "fatal";
    let session: Ort.InferenceSession;
    try {
      // Dawn writes its own warnings straight to stderr while it opens the device
      session = await quietStderr(providers[0] !== "cpu", () =>
        o.InferenceSession.create(path, {
          executionProviders: providers,
          graphOptimizationLevel: "all",
          // onnxruntime's CPU arena and memory pattern stay on: at the 360M shape with q8 weights turning them off lowered
          // peak RSS by 54 and 100 MB, but on the retrieval model it made prefill 2.5× slower (100K tokens: 22 s → 55 s)
          // and raised peak RSS (469 → 620 MiB) from allocation churn (`deno task demo`)
          ...log,
          ...(opts.threads ? { intraOpNumThreads: opts.threads } : {}),
          ...opts.ort,
        }));
    } catch (err) {
      if (providers[0] === "cpu") throw err;
      // the first line, without onnxruntime's source location and failed condition
      const msg = (err instanceof Error ? err.message : String(err)).split("\n")[0]
        .replace(/^.*?\bwas false\.\s*/, "").replace(/^\/\S+:\d+\s+/, "");
      const hint = providers[0] === "webgpu" ? `; ${WEBGPU_HINT}` : "";
      throw new TomeError(
        "device",
        `onnxruntime could not start on ${providers[0]}: ${msg}${hint} (or use --device cpu)`,
      );
    }
    return new ModelSession(config, graph, o, session, providers[0] !== "cpu");
  }

  #flags = new Map<boolean, Ort.Tensor>();
  /** A bool scalar feed (one tensor per value, reused by every run). */
  #flag(on: boolean): Ort.Tensor {
    let t = this.#flags.get(on);
    if (!t) this.#flags.set(on, t = new this.ort.Tensor("bool", Uint8Array.of(on ? 1 : 0), []));
    return t;
  }

  /** The most KV bytes one run has fed (past keys and values of every layer): on a GPU, the device buffers they fill. */
  get kvFedPeakBytes(): number {
    return this.#kvFedPeak;
  }

  async run(req: RunRequest): Promise<RunResult> {
    const { layers, kvHeads: K, headDim: d } = this.config;
    const S = req.ids.length;
    const T = this.ort.Tensor;
    const kvType = this.graph.kvDtype;
    if (req.positions.length !== S) throw new Error(`${S} ids but ${req.positions.length} positions`);
    const rope = this.#rope(req.positions);
    const feeds: Record<string, Ort.Tensor> = {
      input_ids: new T("int64", int64(req.ids), [1, S]),
      rope_cos: new T("float32", rope.cos, [1, 1, S, d]),
      rope_sin: new T("float32", rope.sin, [1, 1, S, d]),
      window_start: new T("int64", BigInt64Array.of(BigInt(req.windowStart ?? S - 1)), [1]),
    };
    const padded: boolean[] = [];
    const caps: number[] = [];
    let fed = 0;
    let maxCap = 0;
    for (let l = 0; l < layers; l++) {
      let keys = req.past.keys[l];
      let values = req.past.values[l];
      let cap = keys.length / (K * d);
      if (!Number.isInteger(cap) || values.length !== keys.length) {
        throw new Error(`layer ${l}: KV buffers of ${keys.length}/${values.length} elements are not [${K}, P, ${d}]`);
      }
      padded.push(this.padEmpty && cap === 0);
      if (padded[l]) {
        // one slot past every head's length (0), so masked: it adds exp(−∞) = 0 everywhere
        keys = values = kvType === "float32" ? new Float32Array(K * d) : new Uint16Array(K * d);
        cap = 1;
      }
      caps.push(cap);
      fed += keys.byteLength + values.byteLength;
      maxCap = Math.max(maxCap, cap);
      feeds[io.pastKey(l)] = new T(kvType, keys, [1, K, cap, d]);
      feeds[io.pastValue(l)] = new T(kvType, values, [1, K, cap, d]);
    }
    this.#kvFedPeak = Math.max(this.#kvFedPeak, fed);
    if (this.graph.positions === "compact") {
      const slots = this.#slotTables(maxCap);
      feeds.past_rope_cos = new T("float32", slots.cos, [1, 1, maxCap, d]);
      feeds.past_rope_sin = new T("float32", slots.sin, [1, 1, maxCap, d]);
    }
    if (req.past.lengths.length !== layers * K) throw new Error(`past lengths: expected ${layers * K} values`);
    feeds.past_lengths = new T("float32", Float32Array.from(req.past.lengths), [layers, K]);
    const lowCaps = this.graph.lowTier ? this.#lowFeeds(feeds, req.low) : [];
    const want = req.fetch ?? {};
    // the statistics and retaining heads are computed only when fetched (an If node per layer in the graph),
    // or always in graphs without switches (`alwaysStats`: WebGPU)
    if (!this.graph.alwaysStats) {
      feeds[io.wantStats] = this.#flag((want.stats?.length ?? 0) > 0);
      if (this.graph.retainingHeads) feeds[io.wantRetain] = this.#flag(want.retain ?? false);
    }
    const fetches: string[] = [];
    if (want.logits ?? true) fetches.push("logits");
    if (want.kv ?? true) { for (let l = 0; l < layers; l++) fetches.push(io.newKey(l), io.newValue(l)); }
    for (const s of want.stats ?? []) for (let l = 0; l < layers; l++) fetches.push(io.stat(s, l));
    if (want.retain) { for (let l = 0; l < layers; l++) fetches.push(io.retain(l)); }
    if (this.graph.lowTier) {
      for (const s of want.stats ?? []) for (let l = 0; l < layers; l++) fetches.push(lowIo.stat(s, l));
      if (want.queryAbsMax) { for (let l = 0; l < layers; l++) fetches.push(lowIo.queryAbsMax(l)); }
    }
    if (want.queryEnergy) {
      if (!this.graph.queryEnergy) throw new Error("query energy asked of a graph built without queryEnergy");
      for (let l = 0; l < layers; l++) fetches.push(queryEnergyIo(l));
    }
    fetches.push(...want.outputs ?? []);
    const out = await this.session.run(feeds, fetches);
    const result: RunResult = { newKeys: [], newValues: [], stats: {} };
    if (out.logits) result.logits = out.logits.data as Float32Array;
    if (want.kv ?? true) {
      for (let l = 0; l < layers; l++) {
        result.newKeys.push(out[io.newKey(l)].data as KvArray);
        result.newValues.push(out[io.newValue(l)].data as KvArray);
      }
    }
    for (const s of want.stats ?? []) {
      result.stats[s] = Array.from({ length: layers }, (_, l) => {
        const a = out[io.stat(s, l)].data as Float32Array;
        // a statistic the graph skipped is empty: never score from it
        if (a.length !== K * (caps[l] + S)) {
          throw new Error(`${io.stat(s, l)}: ${a.length} values, not ${K}×${caps[l] + S}`);
        }
        return padded[l] ? dropFirstSlot(a, K) : a;
      });
    }
    if (want.outputs) result.outputs = Object.fromEntries(want.outputs.map((n) => [n, out[n].data as Float32Array]));
    if (want.queryEnergy) {
      result.queryEnergy = Array.from({ length: layers }, (_, l) => out[queryEnergyIo(l)].data as Float32Array);
    }
    if (want.retain) result.retain = Array.from({ length: layers }, (_, l) => out[io.retain(l)].data as Float32Array);
    if (this.graph.lowTier) {
      result.lowStats = {};
      for (const s of want.stats ?? []) {
        result.lowStats[s] = Array.from({ length: layers }, (_, l) => {
          const a = out[lowIo.stat(s, l)].data as Float32Array;
          if (lowCaps[l] < 0) return new Float32Array(0); // a padded empty tier: its one masked slot
          if (a.length !== K * lowCaps[l]) {
            throw new Error(`${lowIo.stat(s, l)}: ${a.length} values, not ${K}×${lowCaps[l]}`);
          }
          return a;
        });
      }
      if (want.queryAbsMax) {
        result.queryAbsMax = Array.from({ length: layers }, (_, l) => out[lowIo.queryAbsMax(l)].data as Float32Array);
      }
    }
    return result;
  }

  /**
   * Adds the low tier's feeds (an empty tier when `low` is absent); returns each layer's capacity, −1 for an empty
   * one fed as one masked slot (`padEmpty`: the WebGPU provider rejects reductions over empty tensors).
   */
  #lowFeeds(feeds: Record<string, Ort.Tensor>, low: LowPast | undefined): number[] {
    const { layers, kvHeads: K, headDim: d } = this.config;
    const T = this.ort.Tensor;
    const kvType = this.graph.kvDtype;
    const bytes = (d * lowBits(this.graph.lowTier!)) / 8;
    const caps: number[] = [];
    const ones = new Float32Array(K * d).fill(1);
    for (let l = 0; l < layers; l++) {
      const empty = {
        data: new Uint8Array(0),
        scales: kvType === "float32" ? new Float32Array(0) : new Uint16Array(0),
      };
      let keys = low?.keys[l] ?? { ...empty, mins: empty.scales };
      let values = low?.values[l] ?? { ...empty, mins: empty.scales };
      let cap = keys.data.length / (K * bytes);
      const padded = this.padEmpty && cap === 0;
      if (padded) {
        const params = kvType === "float32" ? new Float32Array(K) : new Uint16Array(K);
        keys = values = { data: new Uint8Array(K * bytes), scales: params, mins: params };
        cap = 1;
      }
      if (!Number.isInteger(cap) || values.data.length !== keys.data.length) {
        throw new Error(
          `layer ${l}: low-tier buffers of ${keys.data.length}/${values.data.length} bytes are not [${K}, Q, ${bytes}]`,
        );
      }
      const G = cap === 0 ? 1 : keys.scales.length / (K * cap);
      if (!Number.isInteger(G) || d % G !== 0 || keys.mins.length !== keys.scales.length) {
        throw new Error(`layer ${l}: low-tier steps of ${keys.scales.length} values are not [${K}, ${cap}, G]`);
      }
      caps.push(padded ? -1 : cap);
      const put = (rows: LowRows, data: string, scale: string, min: string) => {
        feeds[data] = new T("uint8", rows.data, [1, K, cap, bytes]);
        feeds[scale] = new T(kvType, rows.scales, [1, K, cap, G]);
        feeds[min] = new T(kvType, rows.mins, [1, K, cap, G]);
      };
      put(keys, lowIo.key(l), lowIo.keyScale(l), lowIo.keyMin(l));
      put(values, lowIo.value(l), lowIo.valueScale(l), lowIo.valueMin(l));
      feeds[lowIo.balance(l)] = new T("float32", low?.balance[l] ?? ones, [1, K, 1, d]);
    }
    const lengths = low?.lengths ?? new Array(layers * K).fill(0); // a padded slot sits at length 0: masked
    if (lengths.length !== layers * K) throw new Error(`low lengths: expected ${layers * K} values`);
    feeds[lowIo.lengths] = new T("float32", Float32Array.from(lengths), [layers, K]);
    return caps;
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}
