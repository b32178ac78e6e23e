/**
 * Needle-in-a-haystack inputs: slices of a corpus of a given token length with
 * a fact ("The pass code of Natasha is 48213.") placed at a depth, and the
 * question that asks for it.
 */
import { uniform } from "../../kernels/random.ts";
import type { Tokenizer } from "../tokens/tokenizer.ts";

/** Names needles are about. */
export const NAMES = [
  "Natasha",
  "Pierre",
  "Andrei",
  "Sonya",
  "Nikolai",
  "Marya",
  "Boris",
  "Helene",
  "Anatole",
  "Vasili",
  "Denisov",
  "Dolokhov",
  "Petya",
  "Vera",
  "Julie",
  "Kutuzov",
  "Bagration",
  "Berg",
  "Anna",
  "Platon",
];

export interface Needle {
  name: string;
  code: string;
  /** The sentence placed in the haystack. */
  fact: string;
  /** What a completion model continues ("The pass code of Natasha is"). */
  prefix: string;
  /** What a chat model is asked. */
  question: string;
}

export function needle(name: string, code: string): Needle {
  return {
    name,
    code,
    fact: `The pass code of ${name} is ${code}.`,
    prefix: `The pass code of ${name} is`,
    question: `What is the pass code of ${name}? Reply with the five digits only.`,
  };
}

export interface Haystack {
  text: string;
  needle: Needle;
  /** Requested length in tokens, and the depth asked for and actually placed (0–1). */
  length: number;
  depth: number;
  placed: number;
}

/**
 * A slice of `corpus` of `length` tokens (within 0.2%, needle included)
 * starting at a seeded offset, with the needle inserted at the sentence
 * or line boundary nearest to `depth`. A corpus shorter than `length` is repeated.
 */
export function haystack(
  corpus: string,
  tok: Pick<Tokenizer, "encode">,
  length: number,
  depth: number,
  seed: number,
): Haystack {
  const r = uniform(seed);
  const name = NAMES[Math.floor(r() * NAMES.length)];
  const code = String(10000 + Math.floor(r() * 90000));
  const n = needle(name, code);
  const offset = r();
  const want = Math.max(1, length - tok.encode(` ${n.fact} `).length);
  const cut = (chars: number) => {
    if (chars >= corpus.length) {
      let text = corpus;
      while (text.length < chars) text += "\n" + corpus.slice(0, chars - text.length - 1);
      return text;
    }
    const start = Math.floor(offset * (corpus.length - chars));
    return corpus.slice(start, start + chars);
  };
  // chars per token varies along a corpus: refine the slice's length on the slice itself
  const sample = corpus.slice(0, Math.min(corpus.length, 20000));
  let chars = Math.ceil(want * sample.length / Math.max(1, tok.encode(sample).length));
  const close = (got: number) => Math.abs(got - want) <= Math.max(2, 0.002 * want);
  let text = cut(chars);
  let got = tok.encode(text).length;
  for (let i = 0; i < 6 && !close(got); i++) {
    chars = Math.max(1, Math.round(chars * want / Math.max(1, got)));
    text = cut(chars);
    got = tok.encode(text).length;
  }
  if (!close(got) && chars < corpus.length) {
    // the slice moves with its length, so the ratio can oscillate: hold its start and bisect its length (a longer
    // prefix never has fewer tokens)
    const start = Math.min(Math.floor(offset * (corpus.length - chars)), Math.max(0, corpus.length - 2 * chars));
    const from = corpus.slice(start);
    let lo = 1, hi = Math.min(from.length, 2 * chars);
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (tok.encode(from.slice(0, mid)).length < want) lo = mid + 1;
      else hi = mid;
    }
    text = from.slice(0, lo);
  }
  const target = Math.floor(text.length * depth);
  let at = target;
  if (depth <= 0) at = 0;
  else if (depth >= 1) at = text.length;
  else {
    // the nearest sentence end, else line end, within 1% of the text; else the depth itself
    const near = (sep: string) => {
      const i = [text.lastIndexOf(sep, target), text.indexOf(sep, target)]
        .filter((i) => i >= 0 && Math.abs(i - target) <= 0.01 * text.length)
        .sort((a, b) => Math.abs(a - target) - Math.abs(b - target))[0];
      return i === undefined ? undefined : i + sep.length;
    };
    at = near(". ") ?? near("\n") ?? target;
  }
  const joined = `${text.slice(0, at)}${at > 0 && !/\s$/.test(text.slice(0, at)) ? " " : ""}${n.fact} ${
    text.slice(at)
  }`;
  return { text: joined, needle: n, length, depth, placed: at / Math.max(1, text.length) };
}

/** The seed of one trial: every (length, depth, trial) cell gets its own slice, name and code. */
export function trialSeed(seed: number, length: number, depth: number, trial: number): number {
  return seed * 1_000_003 + length * 7919 + Math.round(depth * 1000) * 31 + trial;
}

/** The first five digits of an answer, and how it scores against the code. */
export function scoreAnswer(answer: string, code: string): { digits: string; exact: boolean; partial: number } {
  const digits = answer.replace(/\D/g, "").slice(0, code.length);
  let same = 0;
  for (let i = 0; i < code.length; i++) if (digits[i] === code[i]) same++;
  return { digits, exact: digits === code, partial: same / code.length };
}
