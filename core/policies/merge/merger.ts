/**
 * What a merger is: after the selection has cut a KV head to its budget, it
 * folds some of the entries that lost into entries that stay, instead of
 * dropping them. Merged entries are ordinary K/V entries (the entry count,
 * hence the KV bytes, is the selection's), so a merger composes with any
 * scored policy and needs no graph change.
 */
import type { Nearest, NearestSearch } from "../../../kernels/nearest.ts";
import type { Protection } from "../policy.ts";

/** One KV head after selection, as a merger sees it: the n considered entries (retained ++ new) as f32 rows. */
export interface MergeHead {
  layer: number;
  head: number;
  n: number;
  d: number;
  /** [n, d] keys as cached (after RoPE in `original` positions, before it in `compact`); a merger updates kept rows in place. */
  keys: Float32Array;
  /** [n, d] values; updated in place like `keys`. */
  values: Float32Array;
  /** Ascending indices of the entries the selection keeps. */
  keep: Int32Array;
  /** The protected first and last entries (already clamped to n). */
  protect: Protection;
  /** Original position of each entry (a merged entry keeps its kept entry's). */
  positions: Int32Array;
  /** The policy's score of each entry, the importance the selection kept by (H2O's: accumulated attention ÷ queries). */
  importance: Float32Array;
  /**
   * The answer to the merger's {@link Merger.search} on this head, when the
   * engine ran it (all heads of a layer in one batched product, exact); absent,
   * the merger searches itself.
   */
  nearest?: Nearest;
}

/** Folds dropped entries into kept ones. */
export interface Merger {
  name: string;
  /** One line: the method in words, and its source. */
  summary: string;
  /**
   * The nearest-by-cosine search `merge` would run on this head, if any, for
   * the engine to run batched and hand back as `head.nearest` (exactly what the
   * merger's own search finds). Reads the head, changes nothing.
   */
  search?(head: MergeHead): NearestSearch | undefined;
  /** Merges into the kept rows of `head.keys`/`head.values`; returns the indices (into n) of kept entries it changed. */
  merge(head: MergeHead): Int32Array;
  /** What it carries from one chunk to the next (a saved state keeps it; a loaded one puts it back). */
  readonly state: MergerState;
}

/** A merger's state between chunks: the weight of each kept entry, and D2O's per-head thresholds. */
export interface MergerState {
  weights: MergeWeights;
  /** Per layer and KV head: a value carried between chunks (D2O's moving-average threshold); absent: none. */
  thresholds?: HeadValues;
}

/** One number per layer and KV head, absent until set. */
export class HeadValues {
  readonly #values = new Map<number, number>();

  /** The value of layer `layer`, head `head`, or undefined. */
  get(layer: number, head: number): number | undefined {
    return this.#values.get(layer * 65536 + head);
  }

  /** Sets the value of one head. */
  set(layer: number, head: number, v: number): void {
    this.#values.set(layer * 65536 + head, v);
  }

  /** Forgets every value. */
  clear(): void {
    this.#values.clear();
  }
}

/**
 * The weight each retained entry stands for (how much has been averaged into
 * it), per layer and KV head, keyed by the entry's original position, which a
 * merged entry keeps. An entry never merged into has weight `base`.
 */
export class MergeWeights {
  readonly #maps = new Map<number, Map<number, number>>();

  constructor(readonly base: number) {}

  /** The map of one head. */
  #of(layer: number, head: number): Map<number, number> {
    const key = layer * 65536 + head;
    let m = this.#maps.get(key);
    if (!m) this.#maps.set(key, m = new Map());
    return m;
  }

  /** Weight of the entry at `position`. */
  get(layer: number, head: number, position: number): number {
    return this.#of(layer, head).get(position) ?? this.base;
  }

  /** Sets the entry's weight. */
  set(layer: number, head: number, position: number, w: number): void {
    this.#of(layer, head).set(position, w);
  }

  /** The entry's weight when one was set (undefined: it stands for `base`). */
  peek(layer: number, head: number, position: number): number | undefined {
    return this.#maps.get(layer * 65536 + head)?.get(position);
  }

  /** Forgets every weight. */
  clear(): void {
    this.#maps.clear();
  }

  /** Forgets the weights of the entries that were not kept (their positions). */
  forget(layer: number, head: number, positions: Iterable<number>): void {
    const m = this.#of(layer, head);
    for (const p of positions) m.delete(p);
  }
}

/** Indices 0…n−1 not in the ascending `keep`. */
export function dropped(n: number, keep: Int32Array): Int32Array {
  const out = new Int32Array(n - keep.length);
  let j = 0, k = 0;
  for (let i = 0; i < n; i++) {
    if (k < keep.length && keep[k] === i) k++;
    else out[j++] = i;
  }
  return out.subarray(0, j);
}
