/**
 * The memory meter (DESIGN.md §5). Fed by the engine after every run, it emits
 * plain event objects that `cli/` renders and tests read.
 *
 * KV bytes: valid entries × head_dim × 2 (K and V) × bytes per element, summed
 * over layers and heads; the peak includes the entries a run holds in flight
 * (its new K/V) before eviction. KV footprint (arXiv 2506.17121): the (query,
 * key) pairs resident while each token was processed, over the full-cache
 * count N(N+1)/2 — a chunk of c tokens over P retained entries contributes
 * c(c+1)/2 + c·P, a decoded token the entries it attends to. Peak KV fraction:
 * the most entries held at once over the tokens seen. Entry counts are means
 * over layers and KV heads. KV footprint in bytes-time: the same sum with each
 * resident entry weighted by the bytes it is held in (a chunk adds
 * c(c+1)/2 · tokenBytes + c · bytes retained before it; a decoded token the
 * bytes it attends to), over the full cache's tokenBytes · N(N+1)/2; it equals
 * the entry footprint unless entries are held at different widths (thin keys).
 * Entry counts (footprint, peak fraction, kept) cover both tiers: MiKV's low
 * entries are attended like the high ones, and only dropped entries count as
 * evicted; the bytes-time footprint weighs each entry by the bytes it is held
 * in, so with a low tier it is below the entry footprint.
 *
 * KV bytes per tier: the high tier is the cache at its dtype (thin keys counted
 * at the channels they keep, merge counts free); the low tier is MiKV's
 * quantized entries (`core/engine/low_store.ts`), 0 without one. The tiers'
 * peaks are each tier's own most (the high peak includes the entries a run
 * holds in flight; the low tier grows only after a step's eviction), so they
 * need not add up to `kvPeakBytes`, the most both held at once.
 */
import { rss } from "./rss.ts";

/** After each prefill chunk. */
export interface ChunkEvent {
  type: "chunk";
  chunk: number;
  /** Document tokens read so far. */
  tokens: number;
  /** Input bytes read so far, and in all when known. */
  bytes: number;
  totalBytes: number | null;
  /** Share of the input read through the model, when its size is known (tokens read over the estimated total). */
  fraction: number | null;
  /** Entries retained per layer and head (mean) after this chunk's eviction. */
  kept: number;
  /** Entries evicted so far (mean per layer and head). */
  evicted: number;
  kvBytes: number;
  kvPeakBytes: number;
  /** KV bytes held in the high tier (the cache) and MiKV's low tier, and each tier's peak (module comment). */
  kvHighBytes: number;
  kvLowBytes: number;
  kvHighPeakBytes: number;
  kvLowPeakBytes: number;
  /** KV footprint so far, in [0, 1]. */
  footprint: number;
  /** KV footprint in bytes-time so far, in [0, 1]. */
  footprintBytes: number;
  /** Most entries held at once over tokens so far. */
  peakFraction: number;
  rssBytes: number;
  rssPeakBytes: number;
  tokensPerSecond: number;
  /** Seconds left, when the input's size is known. */
  etaSeconds: number | null;
  seconds: number;
}

/** After each decoded token. */
export interface TokenEvent {
  type: "token";
  generated: number;
  kvBytes: number;
  kvPeakBytes: number;
  /** As in {@link ChunkEvent}. */
  kvHighBytes: number;
  kvLowBytes: number;
  kvHighPeakBytes: number;
  kvLowPeakBytes: number;
  tokensPerSecond: number;
}

export type MeterEvent = ChunkEvent | TokenEvent;

/** Figures for the whole run. */
export interface MeterSummary {
  /** Prompt tokens (prefix, document, suffix) and generated ones. */
  promptTokens: number;
  documentTokens: number;
  generatedTokens: number;
  kvBytes: number;
  kvPeakBytes: number;
  /** KV bytes held at the end in the high tier and MiKV's low tier, and each tier's peak (module comment). */
  kvHighBytes: number;
  kvLowBytes: number;
  kvHighPeakBytes: number;
  kvLowPeakBytes: number;
  /** KV bytes the full cache would need for every token of the run. */
  fullKvBytes: number;
  footprint: number;
  /** The footprint in bytes-time (see the module comment). */
  footprintBytes: number;
  peakFraction: number;
  kept: number;
  evicted: number;
  rssPeakBytes: number;
  prefillSeconds: number;
  decodeSeconds: number;
}

/** A meter's figures as plain numbers. */
export interface MeterSnapshot {
  tokens: number;
  docTokens: number;
  generated: number;
  promptTokens: number;
  framing: number;
  resident: number;
  /** Bytes-time resident (absent in states written before it was metered: then resident × tokenBytes). */
  residentBytes?: number;
  peakEntries: number;
  kvPeak: number;
  kvNow: number;
  /** Of `kvNow`, the low tier's bytes; the tiers' peaks (absent in states written before: then all high). */
  kvLowNow?: number;
  kvHighPeak?: number;
  kvLowPeak?: number;
  kept: number;
  chunks: number;
  prefillSeconds: number;
}

/**
 * Counts what a run holds and costs — KV bytes now and at peak, footprint,
 * peak fraction, RSS, speed — from the engine's reports after every chunk and
 * token, and hands each as an event to `onEvent`.
 *
 * @example
 * const meter = new Meter(kvBytesPerToken(config, 2), (e) => e.type === "chunk" && console.error(e.kvBytes));
 * const state = await read(text, { model, meter });
 * console.log(meter.summary().kvPeakBytes);
 */
export class Meter {
  #tokens = 0;
  #docTokens = 0;
  #generated = 0;
  #promptTokens = 0;
  #framing = 0;
  #resident = 0;
  #residentBytes = 0;
  #peakEntries = 0;
  #kvPeak = 0;
  #kvNow = 0;
  #kvLowNow = 0;
  #kvHighPeak = 0;
  #kvLowPeak = 0;
  #kept = 0;
  #chunks = 0;
  #started = performance.now();
  #prefillSeconds = 0;
  #decodeStarted = 0;

  /**
   * @param tokenBytes KV bytes of one token across all layers and heads (K and V).
   */
  constructor(
    readonly tokenBytes: number,
    readonly onEvent: (e: MeterEvent) => void = () => {},
  ) {}

  /** A prefill run of `runTokens` (of which `docTokens` are document) over `before` retained entries, leaving `after`. */
  chunk(o: {
    /** Tokens the chunk adds to the sequence (document or framing). */
    tokens: number;
    runTokens: number;
    before: number;
    after: number;
    kvBytesBefore: number;
    kvBytesAfter: number;
    /** Of `kvBytesBefore` and `kvBytesAfter`, the low tier's (default 0: no low tier). */
    lowBytesBefore?: number;
    lowBytesAfter?: number;
    bytes: number;
    totalBytes: number | null;
    /** Tokens produced by the tokenizer so far (it runs ahead of the model). */
    tokenized: number;
  }): ChunkEvent {
    const c = o.tokens;
    this.#resident += (c * (c + 1)) / 2 + c * o.before;
    this.#residentBytes += ((c * (c + 1)) / 2) * this.tokenBytes + c * o.kvBytesBefore;
    this.#tokens += c;
    this.#docTokens += c;
    this.#promptTokens += c;
    this.#peakEntries = Math.max(this.#peakEntries, o.before + o.runTokens);
    this.#kvPeak = Math.max(this.#kvPeak, o.kvBytesBefore + o.runTokens * this.tokenBytes);
    this.#kvNow = o.kvBytesAfter;
    this.#kvLowNow = o.lowBytesAfter ?? 0;
    // the run's new entries are held whole, in the high tier, until the step evicts
    const highBefore = o.kvBytesBefore - (o.lowBytesBefore ?? 0);
    this.#kvHighPeak = Math.max(this.#kvHighPeak, highBefore + o.runTokens * this.tokenBytes, this.#highNow());
    this.#kvLowPeak = Math.max(this.#kvLowPeak, this.#kvLowNow);
    this.#kept = o.after;
    this.#chunks++;
    const seconds = (performance.now() - this.#started) / 1000;
    this.#prefillSeconds = seconds;
    const documentTokens = Math.max(0, this.#docTokens - this.#framing);
    const rate = documentTokens / Math.max(seconds, 1e-9);
    // the input's total tokens, estimated from the tokens per byte seen so far
    const expected = o.totalBytes && o.bytes > 0 ? Math.max(o.tokenized, (o.tokenized * o.totalBytes) / o.bytes) : null;
    const fraction = expected ? Math.min(1, documentTokens / expected) : null;
    const m = rss();
    const e: ChunkEvent = {
      type: "chunk",
      chunk: this.#chunks,
      tokens: documentTokens,
      bytes: o.bytes,
      totalBytes: o.totalBytes,
      fraction,
      kept: o.after,
      evicted: Math.max(0, this.#tokens - o.after),
      kvBytes: this.#kvNow,
      kvPeakBytes: this.#kvPeak,
      ...this.#tiers(),
      footprint: this.#footprint(this.#tokens),
      footprintBytes: this.#footprintBytes(this.#tokens),
      peakFraction: this.#peakEntries / Math.max(1, this.#tokens),
      rssBytes: m.now,
      rssPeakBytes: m.peak,
      tokensPerSecond: rate,
      etaSeconds: fraction ? (seconds * (1 - fraction)) / fraction : null,
      seconds,
    };
    this.onEvent(e);
    return e;
  }

  /**
   * A decoded token (or suffix token) that attended to `entries` entries (itself included), held in
   * `attendedBytes`; `kvBytes` are held after it, `lowBytes` of them in the low tier.
   */
  token(entries: number, kvBytes: number, generated: boolean, attendedBytes = kvBytes, lowBytes = 0): void {
    if (this.#decodeStarted === 0) this.#decodeStarted = performance.now();
    if (!generated) this.#promptTokens++;
    this.#resident += entries;
    this.#residentBytes += attendedBytes;
    this.#tokens += 1;
    this.#peakEntries = Math.max(this.#peakEntries, entries);
    this.#kvNow = kvBytes;
    this.#kvPeak = Math.max(this.#kvPeak, kvBytes);
    this.#kvLowNow = lowBytes;
    this.#kvHighPeak = Math.max(this.#kvHighPeak, this.#highNow());
    this.#kvLowPeak = Math.max(this.#kvLowPeak, lowBytes);
    this.#kept = entries;
    if (!generated) return;
    const seconds = (performance.now() - this.#decodeStarted) / 1000;
    this.onEvent({
      type: "token",
      generated: this.#generated,
      kvBytes,
      kvPeakBytes: this.#kvPeak,
      ...this.#tiers(),
      tokensPerSecond: this.#generated / Math.max(seconds, 1e-9),
    });
  }

  /** The first `n` tokens fed are prompt framing (a template's head), not document. */
  framing(n: number): void {
    this.#framing = n;
  }

  /** Tokens generated so far (a sampled token counts even when the run ends before it is fed back). */
  emitted(n: number): void {
    this.#generated = n;
  }

  /** The figures so far as plain numbers (what a saved state keeps). */
  snapshot(): MeterSnapshot {
    return {
      tokens: this.#tokens,
      docTokens: this.#docTokens,
      generated: this.#generated,
      promptTokens: this.#promptTokens,
      framing: this.#framing,
      resident: this.#resident,
      residentBytes: this.#residentBytes,
      peakEntries: this.#peakEntries,
      kvPeak: this.#kvPeak,
      kvNow: this.#kvNow,
      kvLowNow: this.#kvLowNow,
      kvHighPeak: this.#kvHighPeak,
      kvLowPeak: this.#kvLowPeak,
      kept: this.#kept,
      chunks: this.#chunks,
      prefillSeconds: this.#prefillSeconds,
    };
  }

  /** A meter that goes on from `s` (a fork's, or a saved state's), reporting to `onEvent`. */
  static restore(tokenBytes: number, s: MeterSnapshot, onEvent?: (e: MeterEvent) => void): Meter {
    const m = new Meter(tokenBytes, onEvent);
    m.#tokens = s.tokens;
    m.#docTokens = s.docTokens;
    m.#generated = s.generated;
    m.#promptTokens = s.promptTokens;
    m.#framing = s.framing;
    m.#resident = s.resident;
    m.#residentBytes = s.residentBytes ?? s.resident * tokenBytes;
    m.#peakEntries = s.peakEntries;
    m.#kvPeak = s.kvPeak;
    m.#kvNow = s.kvNow;
    m.#kvLowNow = s.kvLowNow ?? 0;
    m.#kvHighPeak = s.kvHighPeak ?? s.kvPeak;
    m.#kvLowPeak = s.kvLowPeak ?? 0;
    m.#kept = s.kept;
    m.#chunks = s.chunks;
    m.#prefillSeconds = s.prefillSeconds;
    m.#started = performance.now() - s.prefillSeconds * 1000;
    return m;
  }

  /** An independent copy of the figures so far (a forked sequence meters on from here), reporting to `onEvent`. */
  fork(onEvent: (e: MeterEvent) => void = this.onEvent): Meter {
    const m = Meter.restore(this.tokenBytes, this.snapshot(), onEvent);
    m.#started = this.#started;
    m.#decodeStarted = this.#decodeStarted;
    return m;
  }

  summary(): MeterSummary {
    const decodeSeconds = this.#decodeStarted ? (performance.now() - this.#decodeStarted) / 1000 : 0;
    return {
      promptTokens: this.#promptTokens,
      documentTokens: Math.max(0, this.#docTokens - this.#framing),
      generatedTokens: this.#generated,
      kvBytes: this.#kvNow,
      kvPeakBytes: this.#kvPeak,
      ...this.#tiers(),
      fullKvBytes: this.#tokens * this.tokenBytes,
      footprint: this.#footprint(this.#tokens),
      footprintBytes: this.#footprintBytes(this.#tokens),
      peakFraction: this.#peakEntries / Math.max(1, this.#tokens),
      kept: this.#kept,
      evicted: Math.max(0, this.#tokens - this.#kept),
      rssPeakBytes: rss().peak,
      prefillSeconds: this.#prefillSeconds,
      decodeSeconds,
    };
  }

  #highNow(): number {
    return this.#kvNow - this.#kvLowNow;
  }

  #tiers(): Pick<MeterSummary, "kvHighBytes" | "kvLowBytes" | "kvHighPeakBytes" | "kvLowPeakBytes"> {
    return {
      kvHighBytes: this.#highNow(),
      kvLowBytes: this.#kvLowNow,
      kvHighPeakBytes: this.#kvHighPeak,
      kvLowPeakBytes: this.#kvLowPeak,
    };
  }

  #footprint(n: number): number {
    return n === 0 ? 0 : this.#resident / ((n * (n + 1)) / 2);
  }

  #footprintBytes(n: number): number {
    return n === 0 ? 0 : this.#residentBytes / (this.tokenBytes * ((n * (n + 1)) / 2));
  }
}
