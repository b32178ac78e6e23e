import type { Tokenizer } from "./tokenizer.ts";
import { classCutBefore, spaceCutBefore } from "./cuts.ts";

/** Tuning of {@link IncrementalEncoder}; the defaults suit any input. */
export interface IncrementalOptions {
  /** Characters gathered before a cut is attempted. */
  flushChars?: number;
  /** Characters always held back after a cut: the right context that proves the cut. */
  margin?: number;
  /** Characters of committed text kept as left context for the next encode. */
  context?: number;
}

/** What the encoder needs of a tokenizer; `decode` enables the last-resort cut inside a long word. */
export type StreamTokenizer = Pick<Tokenizer, "encode"> & Partial<Pick<Tokenizer, "decode">>;

/**
 * Tokenizes text that arrives in pieces, with exactly the ids that encoding the
 * whole text at once would give — whatever the piece boundaries.
 *
 * Tokenizers are local: the text is split on added tokens and by the
 * pre-tokenizer into pieces that BPE encodes independently, and inside a piece
 * a final token boundary splits BPE into two independent halves (merges never
 * cross it). So the encoder holds back an unfinished tail and cuts only where a
 * token boundary provably lies, at least `margin` characters from the end of
 * what has arrived. Cut points, tried in order:
 *
 * 1. whitespace: just after a newline or just before a space;
 * 2. a change of character class (letter, digit, other) that the
 *    pre-tokenizer splits on — base64, minified JSON, digit-letter mixes;
 * 3. as the last resort, inside one long word (a run of one character, CJK
 *    without punctuation, a long digit run): a token boundary of the encoding
 *    of a window that starts at a proven boundary, accepted only where a second
 *    encoding, from a different start and with a different right end, agrees
 *    on every token of the last `context` characters before the cut, and where
 *    the committed ids decode to exactly the committed text.
 *
 * Cuts 1 and 2 are proven by encoding the text left of the cut with and
 * without the text right of it. The next encode starts from `context`
 * characters of committed text, so start-of-text effects (a prepended `▁`, a
 * prefix space) never reach the emitted ids, and is checked to reproduce that
 * context's ids. Memory is bounded by `flushChars + 2·margin` plus the largest
 * pushed piece whenever a cut exists; without one (a tokenizer whose decoding
 * does not give back the text, and input with no whitespace or class change)
 * the text is held until a cut appears or the input ends, still exact.
 */
export class IncrementalEncoder {
  #pending = "";
  #ctx = "";
  #ctxIds: number[] = [];
  #nextAttempt: number;
  readonly #flushChars: number;
  readonly #margin: number;
  readonly #context: number;

  constructor(readonly tokenizer: StreamTokenizer, opts: IncrementalOptions = {}) {
    this.#flushChars = opts.flushChars ?? 32_768;
    this.#margin = opts.margin ?? 1_024;
    this.#context = opts.context ?? 256;
    this.#nextAttempt = this.#flushChars + this.#margin;
  }

  /** Adds text; returns the ids that are now final (often none). */
  push(text: string): number[] {
    this.#pending += text;
    const out: number[] = [];
    while (this.#pending.length >= this.#nextAttempt) {
      const ids = this.#cut();
      if (ids === null) {
        // Without a provable cut, wait for another flush's worth before retrying.
        this.#nextAttempt = this.#pending.length + this.#flushChars;
        break;
      }
      for (const id of ids) out.push(id);
      this.#nextAttempt = this.#flushChars + 2 * this.#margin;
    }
    return out;
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

  /** Tries cuts at whitespace, then at class changes, then inside a word; committed ids, or null when none is provable yet. */
  #cut(): number[] | null {
    return this.#cutAt(spaceCutBefore) ?? this.#cutAt(classCutBefore) ?? this.#cutInsideWord();
  }

  /** Tries the candidates of one kind from the latest backwards, each proven by encoding with and without its right context. */
  #cutAt(candidateBefore: (text: string, at: number, floor: number) => number): number[] | null {
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
      return this.#commit(ids.slice(this.#ctxIds.length), c, safeTail(left, this.#context));
    }
    return null;
  }

  /**
   * The last resort, for a long run without whitespace or class change: encodes
   * the context and the first `flushChars + margin` pending characters (the
   * context ends at a proven boundary), finds the token boundary about `margin`
   * characters before the window's end by decoding, and accepts it when
   * encoding from another boundary `context` characters earlier, with a right
   * end `margin / 2` past the cut, gives the same tokens up to the cut.
   */
  #cutInsideWord(): number[] | null {
    const tok = this.tokenizer;
    if (tok.decode === undefined) return null;
    const decode = (ids: number[]) => tok.decode!(ids);
    let n = Math.min(this.#pending.length, this.#flushChars + this.#margin);
    if (isLowSurrogate(this.#pending.charCodeAt(n))) n--; // never end the window inside a pair
    const view = this.#pending.slice(0, n);
    const text = this.#ctx + view;
    const all = this.tokenizer.encode(text);
    const base = this.#ctxIds.length;
    if (!startsWith(all, this.#ctxIds)) return null;
    const tailStart = (from: number, chars: number) => {
      let k = from;
      for (let got = 0; k > base && got < chars;) got += decode([all[--k]]).length;
      return k;
    };
    /** Start (in `text`) of the tokens from `k` on, when they decode to exactly the end of `text`. */
    const exactStart = (k: number) => {
      const tail = decode(all.slice(k));
      return !tail.includes("\uFFFD") && text.endsWith(tail) ? text.length - tail.length : -1;
    };
    const k0 = tailStart(all.length, this.#margin);
    for (let kc = k0, tries = 0; kc > base + 1 && tries < 8; kc--, tries++) {
      const cAbs = exactStart(kc);
      const c = cAbs - this.#ctx.length;
      if (c <= this.#context || !solidAround(text, cAbs)) continue;
      // the second encoding's start: a token boundary about `context` characters before the cut
      let kq = tailStart(kc, this.#context), qAbs = -1;
      for (let t = 0; t < 8 && kq > base; t++, kq--) {
        const q = exactStart(kq);
        if (q >= this.#ctx.length && q < cAbs && solidAround(text, q)) {
          qAbs = q;
          break;
        }
      }
      if (qAbs < 0) continue;
      const upToCut = all.slice(kq, kc);
      const other = this.tokenizer.encode(text.slice(qAbs, cAbs + (this.#margin >> 1)));
      if (!startsWith(other, upToCut)) continue;
      const ids = all.slice(base, kc);
      if (decode(ids) !== view.slice(0, c)) continue;
      return this.#commit(ids, c, text.slice(qAbs, cAbs));
    }
    return null;
  }

  /** Drops the first `c` pending characters, whose ids are `ids`; `ctx` (committed text ending at the cut) is the next left context. */
  #commit(ids: number[], c: number, ctx: string): number[] {
    this.#pending = this.#pending.slice(c);
    this.#ctx = ctx;
    // The context may tokenize differently at its own start (it can begin
    // mid-word); only its end matters, and the next encode checks that.
    this.#ctxIds = this.tokenizer.encode(ctx);
    return ids;
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
  tokenizer: StreamTokenizer,
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

/** True when position `i` of `s` has no whitespace on either side and does not split a surrogate pair. */
function solidAround(s: string, i: number): boolean {
  return i > 0 && i < s.length && !/\s/.test(s[i - 1]) && !/\s/.test(s[i]) && !isLowSurrogate(s.charCodeAt(i));
}

const isLowSurrogate = (code: number) => code >= 0xdc00 && code <= 0xdfff;

/** The last `n` characters of `s`, never starting inside a surrogate pair. */
function safeTail(s: string, n: number): string {
  let start = Math.max(0, s.length - n);
  if (start > 0 && isLowSurrogate(s.charCodeAt(start))) start++;
  return s.slice(start);
}

function startsWith(ids: number[], prefix: number[]): boolean {
  if (prefix.length > ids.length) return false;
  for (let i = 0; i < prefix.length; i++) if (ids[i] !== prefix[i]) return false;
  return true;
}
