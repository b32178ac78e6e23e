/**
 * What an eviction policy is: a score over the entries of one KV head, higher
 * meaning "keep". Budgets, protection of sinks and recent entries, top-k and
 * order-preserving compaction live once, in `select.ts` and the engine.
 */
import type { StatName } from "../model/session.ts";
import type { Merger } from "./merge/merger.ts";

/** What a policy sees of one KV head of one layer after a chunk: its retained entries, then the chunk's new ones. */
export interface ScoreView {
  layer: number;
  layers: number;
  /** KV head. */
  head: number;
  kvHeads: number;
  /** Entries under consideration: `past` retained ones followed by the chunk's new document entries. */
  n: number;
  past: number;
  /** Original token position of each entry. */
  positions: Int32Array;
  /** A graph statistic for this head's n entries (summed over the head's query group). */
  stat(name: StatName): Float32Array;
  /** The same statistic for every KV head of the layer, [kvHeads][n] (heads must hold the same entries). */
  layerStat(name: StatName): Float32Array[];
  /** Accumulated attention mass per entry over all chunks so far (the store carries it). */
  accumulated: Float32Array;
  /** Number of queries that have attended to each entry so far. */
  seen: Float32Array;
  /**
   * Importance each entry was given when it arrived (Locret's retaining heads);
   * the array the store keeps, which `arrive` may fill for the new entries (KVzip).
   */
  importance: Float32Array;
  /** ‖k_i‖₂ of each entry's key (as cached). */
  keyNorms(): Float32Array;
  /** Number of observation-window queries this chunk. */
  windowQueries: number;
}

/** Entries the selection always keeps. */
export interface Protection {
  /** The first `sinks` entries (the oldest: attention sinks). */
  sinks: number;
  /** The last `recent` entries. */
  recent: number;
}

export interface Policy {
  name: string;
  /** One line: the score in words, and its source. */
  summary: string;
  /** Graph statistics the score reads (the engine fetches only these). */
  needs: StatName[];
  /** Scores with attention, so the question patch applies. */
  attention: boolean;
  /** Reads the graph's retaining-head scores (the model must be loaded with retaining heads). */
  retain?: boolean;
  /** Protection given the layer's budget and the chunk's window. */
  protect(budget: number, windowQueries: number, questionPatch: boolean): Protection;
  /**
   * Sets the importance of the view's new entries (indices `past`…`n`−1) once,
   * when they arrive, whether or not anything is evicted then (KVzip).
   */
  arrive?(view: ScoreView): void;
  /** Importance of each of the view's n entries; higher is kept. */
  score(view: ScoreView): Float32Array;
  /** Per-layer budgets from the mean budget (default: the same for every layer). */
  budgets?(budget: number, layers: number): number[];
  /** One KV head's budget from its layer's (Infinity keeps everything; default: the layer's). */
  headBudget?(layer: number, head: number, budget: number): number;
  /** Scores with a reconstruction of each chunk riding along (KVzip) instead of the question. */
  reconstruct?: boolean;
  /** Keeps everything: no selection at all. */
  keepsAll?: boolean;
  /** Every KV head of a layer keeps the same entries (scores are per layer). */
  sharedAcrossHeads?: boolean;
  /** The policy's own merge of what it evicts (EMS), a fresh one per run; `--merge` replaces it. */
  merger?: () => Merger;
}
