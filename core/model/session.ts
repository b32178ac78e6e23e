/**
 * A built decoder graph in an onnxruntime session. `run` takes a chunk of
 * token ids and the retained cache (zero-copy) and returns only what is asked
 * for: onnxruntime copies every fetched output back into JavaScript.
 */
import type { ModelConfig } from "./config.ts";
import { type GraphOptions, io, type StatName } from "./onnx/decoder.ts";
import { type Ort, ort } from "./ort.ts";
import { TomeError } from "../errors.ts";

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

export interface RunRequest {
  ids: ArrayLike<number>;
  positions: ArrayLike<number>;
  past: PastKv;
  /** First query of the observation window (default: the last query). */
  windowStart?: number;
  /** What to fetch: logits (default true), new K/V (default true), which statistics (default none), retaining-head scores. */
  fetch?: { logits?: boolean; kv?: boolean; stats?: StatName[]; retain?: boolean };
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
}

export interface SessionOptions {
  /** Intra-op threads (default: onnxruntime's choice). */
  threads?: number;
  executionProviders?: string[];
  /** Further onnxruntime session options (measured in bench/model.ts: arena, memory pattern). */
  ort?: Ort.InferenceSession.SessionOptions;
}

/** int64 tensor data without intermediate arrays (this runs for every chunk and token). */
function int64(values: ArrayLike<number>): BigInt64Array {
  const out = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = BigInt(values[i]);
  return out;
}

/**
 * One onnxruntime session over a built graph. `run` feeds token ids, their
 * positions and the retained cache (zero-copy) and fetches only the outputs
 * asked for.
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
  ) {}

  /** Opens a built graph (`model.onnx` with its external data beside it). */
  static async open(
    config: ModelConfig,
    graph: GraphOptions,
    path: string,
    opts: SessionOptions = {},
  ): Promise<ModelSession> {
    const o = await ort();
    const providers = opts.executionProviders ?? ["cpu"];
    let session: Ort.InferenceSession;
    try {
      session = await o.InferenceSession.create(path, {
        executionProviders: providers,
        graphOptimizationLevel: "all",
        // measured at the 360M shape with q8 weights (bench/model.ts --session): without the arena and the
        // memory pattern the peak RSS is 54 and 100 MB lower, at the same CPU time per chunk and step
        enableCpuMemArena: false,
        enableMemPattern: false,
        ...(opts.threads ? { intraOpNumThreads: opts.threads } : {}),
        ...opts.ort,
      });
    } catch (err) {
      if (providers[0] === "cpu") throw err;
      const msg = (err instanceof Error ? err.message : String(err)).split("\n")[0];
      throw new TomeError("device", `onnxruntime could not start on ${providers[0]}: ${msg} (try --device cpu)`);
    }
    return new ModelSession(config, graph, o, session);
  }

  async run(req: RunRequest): Promise<RunResult> {
    const { layers, kvHeads: K, headDim: d } = this.config;
    const S = req.ids.length;
    const T = this.ort.Tensor;
    const kvType = this.graph.kvDtype;
    const feeds: Record<string, Ort.Tensor> = {
      input_ids: new T("int64", int64(req.ids), [1, S]),
      positions: new T("int64", int64(req.positions), [1, S]),
      window_start: new T("int64", BigInt64Array.of(BigInt(req.windowStart ?? S - 1)), [1]),
    };
    for (let l = 0; l < layers; l++) {
      const keys = req.past.keys[l];
      const cap = keys.length / (K * d);
      if (!Number.isInteger(cap) || req.past.values[l].length !== keys.length) {
        throw new Error(
          `layer ${l}: KV buffers of ${keys.length}/${req.past.values[l].length} elements are not [${K}, P, ${d}]`,
        );
      }
      feeds[io.pastKey(l)] = new T(kvType, keys, [1, K, cap, d]);
      feeds[io.pastValue(l)] = new T(kvType, req.past.values[l], [1, K, cap, d]);
    }
    if (req.past.lengths.length !== layers * K) throw new Error(`past lengths: expected ${layers * K} values`);
    feeds.past_lengths = new T("int64", int64(req.past.lengths), [layers, K]);
    const want = req.fetch ?? {};
    const fetches: string[] = [];
    if (want.logits ?? true) fetches.push("logits");
    if (want.kv ?? true) { for (let l = 0; l < layers; l++) fetches.push(io.newKey(l), io.newValue(l)); }
    for (const s of want.stats ?? []) for (let l = 0; l < layers; l++) fetches.push(io.stat(s, l));
    if (want.retain) { for (let l = 0; l < layers; l++) fetches.push(io.retain(l)); }
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
      result.stats[s] = Array.from({ length: layers }, (_, l) => out[io.stat(s, l)].data as Float32Array);
    }
    if (want.retain) result.retain = Array.from({ length: layers }, (_, l) => out[io.retain(l)].data as Float32Array);
    return result;
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}
