/**
 * Chunked prefill with immediate per-chunk eviction: document tokens are
 * gathered into chunks, and each chunk is one {@link Sequence.step} — with the
 * question patch riding along as the observation window when a question is
 * known and the policy scores with attention — after which every KV head
 * keeps what the plan says.
 */
import type { BudgetPlan } from "./plan.ts";
import type { Sequence } from "./sequence.ts";

/** Default observation window without the question patch (SnapKV uses 32–64). */
export const DEFAULT_WINDOW = 32;

export interface PrefillOptions {
  plan: BudgetPlan;
  /** Document tokens per run. */
  chunk: number;
  /**
   * Token ids ridden along each chunk as the observation window, their K/V
   * dropped: the question patch, or (a function of the chunk) KVzip's
   * reconstruction prompt; empty: none.
   */
  patch: ArrayLike<number> | ((chunk: Int32Array) => ArrayLike<number>);
  /** Observation window (last entries of the chunk) without the patch. */
  window: number;
}

/** Where the input stands, for the meter. */
export interface Progress {
  /** Input bytes consumed by the tokenizer so far, and in all when known. */
  bytes: number;
  totalBytes: number | null;
  /** Tokens the tokenizer has produced so far (ahead of those the model has read). */
  tokenized: number;
}

/** The chunk loop over a {@link Sequence}: `push` tokens as they come, `end` once. */
export class Prefill {
  #pending: Int32Array;
  #filled = 0;

  constructor(readonly sequence: Sequence, readonly opts: PrefillOptions) {
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

  async #run(doc: Int32Array, progress: Progress): Promise<void> {
    const seq = this.sequence;
    const before = seq.meanEntries();
    const kvBytesBefore = seq.kvBytes();
    const lowBytesBefore = seq.lowBytes();
    const p = this.opts.patch;
    const patch = typeof p === "function" ? p(doc) : p;
    await seq.step(doc, this.opts.plan.prefill, { patch, window: this.opts.window });
    seq.meter.chunk({
      tokens: doc.length,
      runTokens: doc.length + patch.length,
      before,
      after: seq.meanEntries(),
      kvBytesBefore,
      kvBytesAfter: seq.kvBytes(),
      lowBytesBefore,
      lowBytesAfter: seq.lowBytes(),
      ...progress,
    });
  }
}
