import type { Tokenizer } from "./tokenizer.ts";

/** Tuning of {@link IncrementalEncoder}; the defaults suit any input. */
export interface IncrementalOptions {
  /** Characters gathered before a cut is attempted. */
  flushChars?: number;
  /** Characters always held back after a cut: the right context that proves the cut. */
  margin?: number;
  /** Characters of committed text kept as left context for the next encode. */
  context?: number;
}

/**
 * Tokenizes text that arrives in pieces, with exactly the ids that encoding the
 * whole text at once would give — whatever the piece boundaries.
 *
 * Tokenizers are local: the text is split on added tokens and by the
 * pre-tokenizer into pieces that BPE encodes independently. So the encoder
 * holds back an unfinished tail and cuts only where a token boundary provably
 * lies: just after a newline or just before a space, at least `margin`
 * characters from the end of what has arrived, and only if encoding the text
 * left of the cut, with and without the text right of it, agrees there. The
 * next encode starts from `context` characters of committed text, so
 * start-of-text effects (a prepended `▁`, a prefix space) never reach the
 * emitted ids, and is checked to reproduce that context's ids.
 */
export class IncrementalEncoder {
  #pending = "";
  #ctx = "";
  #ctxIds: number[] = [];
  #nextAttempt: number;
  readonly #flushChars: number;
  readonly #margin: number;
  readonly #context: number;

  constructor(readonly tokenizer: Pick<Tokenizer, "encode">, opts: IncrementalOptions = {}) {
    this.#flushChars = opts.flushChars ?? 32_768;
    this.#margin = opts.margin ?? 1_024;
    this.#context = opts.context ?? 256;
    this.#nextAttempt = this.#flushChars + this.#margin;
  }

  /** Adds text; returns the ids that are now final (often none). */
  push(text: string): number[] {
    this.#pending += text;
    if (this.#pending.length < this.#nextAttempt) return [];
    const ids = this.#cut();
    // Without a provable cut, wait for another flush's worth before retrying.
    this.#nextAttempt = ids === null
      ? this.#pending.length + this.#flushChars
      : this.#pending.length + this.#flushChars + this.#margin;
    return ids ?? [];
  }

  /** Ends the text; returns the remaining ids. */
  end(): number[] {
    const all = this.tokenizer.encode(this.#ctx + this.#pending);
    if (!startsWith(all, this.#ctxIds)) {
      throw new Error(
        "incremental tokenization lost its alignment at the end of input (a tokenizer that is not local?)",
      );
    }
    this.#pending = "";
    this.#ctx = "";
    const ids = all.slice(this.#ctxIds.length);
    this.#ctxIds = [];
    return ids;
  }

  /** Tries cuts from the latest backwards; returns committed ids, or null when none is provable yet. */
  #cut(): number[] | null {
    const pending = this.#pending;
    const limit = pending.length - this.#margin;
    const floor = Math.max(1, limit - this.#flushChars);
    let tries = 0;
    for (
      let c = candidateBefore(pending, limit, floor);
      c > 0 && tries < 8;
      c = candidateBefore(pending, c - 1, floor)
    ) {
      tries++;
      const left = this.#ctx + pending.slice(0, c);
      const ids = this.tokenizer.encode(left);
      if (!startsWith(ids, this.#ctxIds)) continue;
      if (!this.#boundaryHolds(left, pending.slice(c, c + this.#margin))) continue;
      const committed = ids.slice(this.#ctxIds.length);
      this.#pending = pending.slice(c);
      this.#ctx = safeTail(left, this.#context);
      // The context may tokenize differently at its own start (it can begin
      // mid-word); only its end matters, and the next encode checks that.
      this.#ctxIds = this.tokenizer.encode(this.#ctx);
      return committed;
    }
    return null;
  }

  /** True when appending `right` to the last part of `left` leaves that part's ids unchanged. */
  #boundaryHolds(left: string, right: string): boolean {
    const w = safeTail(left, this.#context);
    const alone = this.tokenizer.encode(w);
    const joined = this.tokenizer.encode(w + right);
    return startsWith(joined, alone);
  }
}

/**
 * A web stream from text segments to arrays of final token ids, equal in
 * concatenation to encoding the whole text at once.
 */
export function tokenize(
  tokenizer: Pick<Tokenizer, "encode">,
  opts?: IncrementalOptions,
): TransformStream<string, Uint32Array> {
  const enc = new IncrementalEncoder(tokenizer, opts);
  return new TransformStream<string, Uint32Array>({
    transform(segment, controller) {
      const ids = enc.push(segment);
      if (ids.length > 0) controller.enqueue(Uint32Array.from(ids));
    },
    flush(controller) {
      const ids = enc.end();
      if (ids.length > 0) controller.enqueue(Uint32Array.from(ids));
    },
  });
}

const isSpace = (ch: string) => ch === " " || ch === "\n" || ch === "\t" || ch === "\r" || ch === "\f" || ch === "\v";

/**
 * The largest cut position ≤ `at` and ≥ `floor` that is likely a token
 * boundary: after a newline that is followed by a non-space character, or
 * before a single space between two non-space characters. 0 when none.
 */
function candidateBefore(text: string, at: number, floor: number): number {
  for (let c = at; c >= floor; c--) {
    const prev = text[c - 1];
    const next = text[c];
    if (next === undefined || isSpace(next) && next !== " ") continue;
    if (prev === "\n" && next !== " ") return c;
    if (next === " " && !isSpace(prev) && text[c + 1] !== undefined && !isSpace(text[c + 1])) return c;
  }
  return 0;
}

/** The last `n` characters of `s`, never starting inside a surrogate pair. */
function safeTail(s: string, n: number): string {
  let start = Math.max(0, s.length - n);
  const code = s.charCodeAt(start);
  if (start > 0 && code >= 0xdc00 && code <= 0xdfff) start++;
  return s.slice(start);
}

function startsWith(ids: number[], prefix: number[]): boolean {
  if (prefix.length > ids.length) return false;
  for (let i = 0; i < prefix.length; i++) if (ids[i] !== prefix[i]) return false;
  return true;
}
