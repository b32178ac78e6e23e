/**
 * Candidate cut points for streamed tokenization: places where pre-tokenizers
 * of the GPT-2, Llama-3 and SentencePiece families usually end a piece. Only
 * candidates — the encoder proves each one before cutting.
 */

const isSpace = (ch: string) => ch === " " || ch === "\n" || ch === "\t" || ch === "\r" || ch === "\f" || ch === "\v";

/**
 * The largest cut position ≤ `at` and ≥ `floor` that is likely a token
 * boundary: after a newline that is followed by a non-space character, or
 * before a single space between two non-space characters. 0 when none.
 */
export function spaceCutBefore(text: string, at: number, floor: number): number {
  for (let c = at; c >= floor; c--) {
    const prev = text[c - 1];
    const next = text[c];
    if (next === undefined || isSpace(next) && next !== " ") continue;
    if (prev === "\n" && next !== " ") return c;
    if (next === " " && !isSpace(prev) && text[c + 1] !== undefined && !isSpace(text[c + 1])) return c;
  }
  return 0;
}

const LETTER = 1, DIGIT = 2, OTHER = 3, SPACE = 4;
const ASCII = new Uint8Array(128).map((_, b) => {
  const ch = String.fromCharCode(b);
  return /\s/.test(ch) ? SPACE : /\p{L}/u.test(ch) ? LETTER : /\p{N}/u.test(ch) ? DIGIT : OTHER;
});

/** The class of the code point at `i` (a high surrogate's pair is read whole; a low surrogate alone: OTHER). */
function classAt(text: string, i: number): number {
  const code = text.charCodeAt(i);
  if (code < 128) return ASCII[code];
  const ch = String.fromCodePoint(text.codePointAt(i)!);
  return /\s/u.test(ch) ? SPACE : /\p{L}/u.test(ch) ? LETTER : /\p{N}/u.test(ch) ? DIGIT : OTHER;
}

/**
 * The largest cut position ≤ `at` and ≥ `floor` between two non-space
 * characters of different classes (letter, digit, other) — where GPT-2-style
 * patterns (`\p{L}+`, `\p{N}`, `[^\s\p{L}\p{N}]+`) end a piece — except after
 * an apostrophe (contractions such as `'s` are one piece) and inside a
 * surrogate pair. 0 when none.
 */
export function classCutBefore(text: string, at: number, floor: number): number {
  for (let c = Math.min(at, text.length - 1); c >= floor; c--) {
    const code = text.charCodeAt(c);
    if (code >= 0xdc00 && code <= 0xdfff) continue;
    const next = classAt(text, c);
    if (next === SPACE) continue;
    const prevCode = text.charCodeAt(c - 1);
    const prev = classAt(text, prevCode >= 0xdc00 && prevCode <= 0xdfff && c >= 2 ? c - 2 : c - 1);
    if (prev === SPACE || prev === next) continue;
    const p = text[c - 1];
    if ((p === "'" || p === "\u2019") && next === LETTER) continue;
    return c;
  }
  return 0;
}
