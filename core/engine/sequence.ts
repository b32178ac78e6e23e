/**
 * A sequence being read: the retained KV cache, the position cursor and the
 * session that runs the model over it. Every run goes through it — document
 * chunks, the recipe's suffix, generated tokens, teacher-forced text — so no
 * other object touches the cache or the cursor.
 */
import type { Meter } from "../meter/meter.ts";
import type { ModelSession, RunResult, StatName } from "../model/session.ts";
import { evictLayer } from "./evict.ts";
import type { KvStore } from "./kv_store.ts";
import type { EvictionRule } from "./plan.ts";
import type { LowStore } from "./low_store.ts";
import { chunkBalance } from "./demote.ts";

/** How a {@link Sequence.step} evicts. */
export interface StepOptions {
  /** Tokens run after `ids` whose queries are the observation window and whose K/V are dropped (the question patch). */
  patch?: ArrayLike<number>;
  /** Observation window without a patch: the last `window` of `ids`. */
  window: number;
  /** Fetch the last position's logits. */
  logits?: boolean;
}

/**
 * The retained cache, the next position and the session, with the two ways a
 * run extends the sequence: {@link append} keeps every new entry,
 * {@link step} scores and evicts to a rule's budgets.
 *
 * @example
 * const seq = new Sequence(model.session, new KvStore(model.config, "float16"), meter);
 * await seq.step(chunkIds, plan.prefill, { patch: question, window: 32 });
 * const { logits } = await seq.append(suffixIds, { logits: true });
 */
export class Sequence {
  /** Tokens fed so far: the next token's original position. */
  position = 0;
  /** Seconds spent in model runs, and in scoring, selecting and compacting. */
  readonly timings = { run: 0, evict: 0 };

  /**
   * @param low MiKV's low tier (a session built with `lowTier`): evicted entries move there at 4 or 2 bits, and
   * every run attends to them.
   */
  constructor(
    readonly session: ModelSession,
    readonly store: KvStore,
    readonly meter: Meter,
    readonly low?: LowStore,
  ) {
    if (low && !session.graph.lowTier) throw new Error("a low tier needs a session built with lowTier");
    if (store.keyChannels && !session.graph.queryEnergy) {
      throw new Error("thin keys need a session built with queryEnergy (loadModel queryEnergy): ThinK's query factor");
    }
  }

  /** KV bytes held: the cache, and MiKV's low tier when there is one. */
  kvBytes(): number {
    return this.store.bytes() + this.lowBytes();
  }

  /** Of {@link kvBytes}, the low tier's (0 without one). */
  lowBytes(): number {
    return this.low?.bytes() ?? 0;
  }

  /** Positions the graph gets for `n` new tokens: original positions, or (compact) from the filled slots on. */
  nextPositions(n: number): Int32Array {
    const base = this.session.graph.positions === "compact" ? this.#maxLength() : this.position;
    return Int32Array.from({ length: n }, (_, i) => base + i);
  }

  /** Makes room for `n` more entries per head, once, before a phase that appends them one run at a time. */
  reserve(n: number): void {
    this.store.reserve(n);
  }

  /**
   * Runs `ids` and keeps all their K/V (no eviction): the suffix, generated
   * tokens, teacher forcing. `session` runs a graph of the same model with
   * other outputs (every position's logits).
   */
  async append(
    ids: ArrayLike<number>,
    opts: { logits?: boolean; session?: ModelSession } = {},
  ): Promise<RunResult> {
    const n = ids.length;
    const { layers: L } = this.session.config;
    this.store.reserve(n);
    const t = performance.now();
    const session = opts.session ?? this.session;
    if (this.low && this.low.entries() > 0 && !session.graph.lowTier) {
      throw new Error("this run's session has no low tier, and the sequence holds low-tier entries");
    }
    const r = await session.run({
      ids,
      positions: this.nextPositions(n),
      past: this.store.past(),
      low: session.graph.lowTier ? this.low?.past() : undefined,
      fetch: { logits: opts.logits ?? false, kv: true },
    });
    this.timings.run += (performance.now() - t) / 1000;
    const original = this.#originalPositions(n);
    for (let l = 0; l < L; l++) {
      this.store.append(l, { keys: r.newKeys[l], values: r.newValues[l], stride: n }, n, original);
    }
    this.position += n;
    return r;
  }

  /**
   * Runs `ids` (with the patch after them), then every layer keeps what
   * `rule` says of its retained entries followed by the new ones; the patch's
   * K/V are dropped.
   */
  async step(ids: ArrayLike<number>, rule: EvictionRule, opts: StepOptions): Promise<RunResult> {
    const { layers: L } = this.session.config;
    const c = ids.length;
    const patch = opts.patch ?? [];
    const S = c + patch.length;
    const run = new Int32Array(S);
    run.set(ids);
    run.set(patch, c);
    const windowQueries = patch.length > 0 ? patch.length : Math.min(c, opts.window);
    const { policy } = rule;
    const low = this.low;
    // the low tier keeps its entries by the attention they accumulate: the `all` statistic, over both tiers
    const needs: StatName[] = [...new Set([...policy.needs, ...(low ? ["all" as const] : [])])];
    let t = performance.now();
    const result = await this.session.run({
      ids: run,
      positions: this.nextPositions(S),
      past: this.store.past(),
      windowStart: S - windowQueries,
      low: low?.past(),
      fetch: {
        logits: opts.logits ?? false,
        kv: true,
        stats: needs,
        retain: policy.retain,
        queryAbsMax: low && !low.balanced,
        queryEnergy: this.store.keyChannels !== undefined,
      },
    });
    this.timings.run += (performance.now() - t) / 1000;
    t = performance.now();
    const positions = this.#originalPositions(c);
    if (low) {
      if (!low.balanced) {
        // the balancer, from the first chunk's queries and keys
        const d = this.session.config.headDim;
        for (let l = 0; l < L; l++) low.setBalance(l, chunkBalance(result.queryAbsMax![l], result.newKeys[l], S, c, d));
        low.balanced = true;
      }
      for (let l = 0; l < L; l++) low.accumulate(l, result.lowStats!.all![l], S);
    }
    for (let l = 0; l < L; l++) {
      await evictLayer(this.store, l, {
        result,
        fresh: c,
        runTokens: S,
        positions,
        windowQueries,
        patch: patch.length > 0,
        rule,
        low,
      });
    }
    this.timings.evict += (performance.now() - t) / 1000;
    this.position += c;
    return result;
  }

  /** An independent copy of the retained state (cache, cursor, meter) on the same session. */
  fork(meter: Meter = this.meter.fork()): Sequence {
    const s = new Sequence(this.session, this.store.clone(), meter, this.low?.clone());
    s.position = this.position;
    return s;
  }

  /** Original positions of the entries layer `l`, KV head `h` retains, in order. */
  retained(l: number, h: number): Int32Array {
    const layer = this.store.layers[l];
    return layer.positions.slice(h * layer.capacity, h * layer.capacity + layer.lengths[h]);
  }

  /** Entries held per layer and KV head (mean), in both tiers: MiKV's low entries are attended like the high ones. */
  meanEntries(): number {
    const { layers: L, kvHeads: K } = this.session.config;
    return (this.store.entries() + (this.low?.entries() ?? 0)) / (L * K);
  }

  #originalPositions(n: number): Int32Array {
    return Int32Array.from({ length: n }, (_, i) => this.position + i);
  }

  #maxLength(): number {
    let m = 0;
    for (const layer of this.store.layers) for (const n of layer.lengths) m = Math.max(m, n);
    return m;
  }
}
