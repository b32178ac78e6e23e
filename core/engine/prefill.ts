/**
 * Chunked prefill with immediate per-chunk eviction. Each chunk of document
 * tokens runs against the retained cache — with the question patch riding
 * along as the observation window when a question is known and the policy
 * scores with attention (its K/V are dropped afterwards) — then the policy
 * scores every entry and each KV head keeps its budget.
 */
import { fromF16Bits } from "../../kernels/fp16.ts";
import type { Meter } from "../meter/meter.ts";
import type { ModelSession, RunResult, StatName } from "../model/session.ts";
import { type Policy, type Protection, type ScoreView, select } from "../policies/mod.ts";
import type { HeadUpdate, KvStore } from "./kv_store.ts";

export interface PrefillOptions {
  policy: Policy;
  /** Mean entries per layer and KV head (per-layer budgets come from the policy). */
  budget: number;
  /** Document tokens per run. */
  chunk: number;
  /** Token ids of the question or instruction, used as the observation window when the patch applies. */
  question?: number[];
  /** Ride the question along each chunk (default: when the policy scores with attention and a question is known). */
  questionPatch?: boolean;
  /** Observation window (last entries of the chunk) when there is no question patch. */
  window?: number;
  /** Override the policy's protected sinks / recent entries. */
  sinks?: number;
  recent?: number;
}

/** Default observation window without the question patch (SnapKV uses 32–64). */
export const DEFAULT_WINDOW = 32;

/** Where the input stands, for the meter. */
export interface Progress {
  /** Input bytes consumed by the tokenizer so far, and in all when known. */
  bytes: number;
  totalBytes: number | null;
  /** Tokens the tokenizer has produced so far (ahead of those the model has read). */
  tokenized: number;
}

export class Prefill {
  /** Tokens fed so far (prefix included): the next original position. */
  position = 0;
  readonly budgets: number[];
  readonly patch: boolean;
  /** Seconds spent in model runs, and in scoring, selecting and compacting. */
  readonly timings = { run: 0, evict: 0 };
  /** The chunk being assembled. */
  #pending: Int32Array;
  #filled = 0;

  constructor(
    readonly session: ModelSession,
    readonly store: KvStore,
    readonly opts: PrefillOptions,
    readonly meter: Meter,
  ) {
    const L = session.config.layers;
    this.budgets = opts.policy.budgets?.(opts.budget, L) ?? new Array(L).fill(opts.budget);
    this.patch = opts.questionPatch ?? (opts.policy.attention && (opts.question?.length ?? 0) > 0);
    if (this.patch && !opts.question?.length) throw new Error("the question patch needs question tokens");
    this.#pending = new Int32Array(opts.chunk);
  }

  /** Adds document (or prefix) tokens; runs every full chunk. */
  async push(ids: ArrayLike<number>, progress: Progress): Promise<void> {
    for (let i = 0; i < ids.length; i++) {
      this.#pending[this.#filled++] = ids[i];
      if (this.#filled === this.#pending.length) {
        this.#filled = 0;
        await this.#run(this.#pending, progress);
      }
    }
  }

  /** Runs what is left. */
  async end(progress: Progress): Promise<void> {
    if (this.#filled > 0) await this.#run(this.#pending.subarray(0, this.#filled), progress);
    this.#filled = 0;
  }

  /** Positions for `n` new tokens: original positions, or (compact) from the filled slots on. */
  nextPositions(n: number, from = this.position): Int32Array {
    const base = this.session.graph.positions === "compact" ? maxLength(this.store) : from;
    return new Int32Array(n).map((_, i) => base + i);
  }

  async #run(doc: Int32Array, progress: Progress): Promise<void> {
    const { layers: L, kvHeads: K } = this.session.config;
    const c = doc.length;
    const question = this.patch ? this.opts.question! : [];
    const S = c + question.length;
    const ids = new Int32Array(S);
    ids.set(doc);
    ids.set(question, c);
    const windowQueries = this.patch ? question.length : Math.min(c, this.opts.window ?? DEFAULT_WINDOW);
    const positions = this.nextPositions(S);
    const docPositions = new Int32Array(c).map((_, i) => this.position + i);
    const before = this.store.entries() / (L * K);
    const kvBytesBefore = this.store.bytes();
    const policy = this.opts.policy;
    const needs: StatName[] = [...new Set(policy.needs)];
    let t = performance.now();
    const result = await this.session.run({
      ids,
      positions,
      past: this.store.past(),
      windowStart: S - windowQueries,
      fetch: { logits: false, kv: true, stats: needs, retain: policy.retain },
    });
    this.timings.run += (performance.now() - t) / 1000;
    t = performance.now();
    for (let l = 0; l < L; l++) this.evict(l, c, S, windowQueries, docPositions, result, this.budgets[l]);
    this.timings.evict += (performance.now() - t) / 1000;
    this.position += c;
    this.meter.chunk({
      sequenceTokens: c,
      docTokens: c,
      runTokens: S,
      before,
      after: this.store.entries() / (L * K),
      kvBytesBefore,
      kvBytesAfter: this.store.bytes(),
      bytes: progress.bytes,
      totalBytes: progress.totalBytes,
      tokenized: progress.tokenized,
    });
  }

  /**
   * Scores and selects layer l's entries (retained ++ the run's first c new ones, of S) down to `budget`
   * and compacts the store. Decode-time eviction calls it with one new token.
   */
  evict(
    l: number,
    c: number,
    S: number,
    windowQueries: number,
    docPositions: Int32Array,
    result: RunResult,
    budget: number,
  ): void {
    const { kvHeads: K, headDim: d } = this.session.config;
    const layer = this.store.layers[l];
    const cap = layer.capacity;
    const policy = this.opts.policy;
    const base = policy.protect(budget, windowQueries, this.patch);
    const protect: Protection = { sinks: this.opts.sinks ?? base.sinks, recent: this.opts.recent ?? base.recent };
    const newKeys = result.newKeys[l];
    const all = result.stats.all?.[l];
    const retain = result.retain?.[l];
    if (policy.retain && !retain) throw new Error(`policy ${policy.name} needs a graph with retaining heads`);

    const views: ScoreView[] = [];
    const updates: HeadUpdate[] = [];
    for (let h = 0; h < K; h++) {
      const P = layer.lengths[h];
      const n = P + c;
      const row = h * (cap + S);
      /** The head's n values of a statistic: retained slots, then the chunk's document entries. */
      const gather = (stat: Float32Array) => {
        const out = new Float32Array(n);
        out.set(stat.subarray(row, row + P));
        out.set(stat.subarray(row + cap, row + cap + c), P);
        return out;
      };
      const positions = new Int32Array(n);
      positions.set(layer.positions.subarray(h * cap, h * cap + P));
      positions.set(docPositions, P);
      const accumulated = new Float32Array(n);
      const seen = new Float32Array(n);
      const importance = new Float32Array(n);
      importance.set(layer.importance.subarray(h * cap, h * cap + P));
      if (retain) importance.set(retain.subarray(h * S, h * S + c), P);
      accumulated.set(layer.accumulated.subarray(h * cap, h * cap + P));
      seen.set(layer.seen.subarray(h * cap, h * cap + P));
      for (let i = 0; i < P; i++) seen[i] += S;
      for (let j = 0; j < c; j++) seen[P + j] = S - j;
      if (all) {
        const mass = gather(all);
        for (let i = 0; i < n; i++) accumulated[i] += mass[i];
      }
      const cache = new Map<StatName, Float32Array>();
      const stat = (name: StatName) => {
        let v = cache.get(name);
        if (!v) {
          const s = result.stats[name]?.[l];
          if (!s) throw new Error(`policy ${policy.name} read statistic "${name}" it did not declare`);
          cache.set(name, v = gather(s));
        }
        return v;
      };
      const view: ScoreView = {
        layer: l,
        layers: this.session.config.layers,
        head: h,
        kvHeads: K,
        n,
        past: P,
        positions,
        stat,
        layerStat: (name) => views.map((v) => v.stat(name)),
        accumulated,
        seen,
        importance,
        keyNorms: () => keyNorms(layer.keys, h * cap, P, newKeys, h * S, c, d),
        windowQueries,
      };
      views.push(view);
      updates.push({ keep: new Int32Array(0), positions, accumulated, seen, importance });
    }
    for (let h = 0; h < K; h++) {
      const v = views[h];
      const headBudget = policy.headBudget?.(l, h, budget) ?? budget;
      if (policy.keepsAll || v.n <= headBudget) updates[h].keep = Int32Array.from({ length: v.n }, (_, i) => i);
      else if (policy.sharedAcrossHeads && h > 0) updates[h].keep = updates[0].keep;
      else updates[h].keep = select(policy.score(v), v.n, headBudget, protect);
    }
    this.store.commit(l, updates, { keys: newKeys, values: result.newValues[l], stride: S });
  }
}

/** ‖k‖₂ of P retained keys followed by c new ones (f32 values or f16 bit patterns). */
function keyNorms(
  past: Float32Array | Uint16Array,
  pastRow: number,
  P: number,
  fresh: Float32Array | Uint16Array,
  freshRow: number,
  c: number,
  d: number,
): Float32Array {
  const out = new Float32Array(P + c);
  const norm = (a: Float32Array | Uint16Array, row: number) => {
    let s = 0;
    for (let i = 0; i < d; i++) {
      const x = a instanceof Float32Array ? a[row * d + i] : fromF16Bits(a[row * d + i]);
      s += x * x;
    }
    return Math.sqrt(s);
  };
  for (let i = 0; i < P; i++) out[i] = norm(past, pastRow + i);
  for (let j = 0; j < c; j++) out[P + j] = norm(fresh, freshRow + j);
  return out;
}

function maxLength(store: KvStore): number {
  let m = 0;
  for (const layer of store.layers) for (const n of layer.lengths) m = Math.max(m, n);
  return m;
}
