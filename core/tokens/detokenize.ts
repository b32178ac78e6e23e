import type { Tokenizer } from "./tokenizer.ts";

/**
 * Turns token ids into text as they arrive, UTF-8-safe: text is emitted only
 * once it can no longer change (a token ending inside a multi-byte character
 * decodes to U+FFFD until the rest arrives), by decoding a short window of
 * recent ids rather than everything generated.
 */
export class Detokenizer {
  #ids: number[] = [];
  #prefix = 0;
  #read = 0;

  constructor(readonly tokenizer: Pick<Tokenizer, "decode">, readonly skipSpecial = true) {}

  /** Adds one id; returns the text that became final (often ""). */
  push(id: number): string {
    this.#ids.push(id);
    const before = this.#decode(this.#prefix, this.#read);
    const after = this.#decode(this.#prefix, this.#ids.length);
    if (after.length > before.length && !after.endsWith("\ufffd")) {
      this.#prefix = this.#read;
      this.#read = this.#ids.length;
      return after.slice(before.length);
    }
    return "";
  }

  /** Whatever is left at the end (an incomplete character stays U+FFFD). */
  flush(): string {
    const before = this.#decode(this.#prefix, this.#read);
    const after = this.#decode(this.#prefix, this.#ids.length);
    this.#prefix = this.#read = this.#ids.length;
    return after.slice(before.length);
  }

  #decode(from: number, to: number): string {
    return to > from ? this.tokenizer.decode(this.#ids.slice(from, to), this.skipSpecial) : "";
  }
}
