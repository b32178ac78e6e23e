/**
 * Training samples for tome's trained eviction: token sequences whose answer
 * span is known, so answer queries exist. Synthetic retrieval samples (a
 * needle in a corpus slice, then the question's prefix, then the code) and
 * plain corpus slices (`--data` files: the last tokens of a slice are its
 * "answer", the continuation the model reads the context for).
 */
import { uniform } from "../../kernels/random.ts";
import { haystack } from "../eval/haystack.ts";
import type { Tokenizer } from "../tokens/tokenizer.ts";

/** One sample: ids = prompt then answer; queries at answerStart−1 … end−1 predict the answer. */
export interface Sample {
  ids: number[];
  /** Index of the first answer token. */
  answerStart: number;
  kind: "needle" | "corpus";
}

/** Tokens a corpus sample's answer span holds. */
export const CORPUS_ANSWER = 32;

/** A needle-in-a-haystack sample of about `length` tokens with its needle at a seeded depth. */
export function needleSample(corpus: string, tok: Tokenizer, bos: number | null, length: number, seed: number): Sample {
  const r = uniform(seed);
  const depth = 0.05 + 0.9 * r();
  const h = haystack(corpus, tok, length, depth, seed);
  const prompt = [...(bos === null ? [] : [bos]), ...tok.encode(`${h.text}\n\n${h.needle.prefix}`)];
  const answer = tok.encode(` ${h.needle.code}`);
  return { ids: [...prompt, ...answer], answerStart: prompt.length, kind: "needle" };
}

/** A slice of `length` tokens of a corpus text at a seeded offset; its last CORPUS_ANSWER tokens are the answer. */
export function corpusSample(text: string, tok: Tokenizer, bos: number | null, length: number, seed: number): Sample {
  const r = uniform(seed);
  // a generous character window, then cut to the token length
  const chars = Math.min(text.length, length * 8);
  const start = Math.floor(r() * Math.max(0, text.length - chars));
  const ids = tok.encode(text.slice(start, start + chars)).slice(0, Math.max(0, length - (bos === null ? 0 : 1)));
  const all = [...(bos === null ? [] : [bos]), ...ids];
  return { ids: all, answerStart: Math.max(1, all.length - CORPUS_ANSWER), kind: "corpus" };
}

/**
 * The samples of a training run, made lazily one at a time (bounded memory):
 * needle samples from `corpus`, interleaved with slices of the `data` texts
 * (a `dataShare` fraction of them when data is given).
 */
export function* samples(
  o: {
    corpus: string;
    data: string[];
    tok: Tokenizer;
    bos: number | null;
    length: number;
    count: number;
    seed: number;
    dataShare?: number;
  },
): Generator<Sample> {
  const r = uniform(o.seed ^ 0x5eed);
  for (let i = 0; i < o.count; i++) {
    const seed = o.seed * 100_003 + i;
    if (o.data.length > 0 && r() < (o.dataShare ?? 0.5)) {
      yield corpusSample(o.data[Math.floor(r() * o.data.length)], o.tok, o.bos, o.length, seed);
    } else yield needleSample(o.corpus, o.tok, o.bos, o.length, seed);
  }
}

/** A training run's samples for a model: its options' corpus, data, length, count (`samples`) and seed, with the model's bos. */
export function runSamples(
  c: { bosTokenId: number | null },
  tok: Tokenizer,
  o: { corpus: string; data: string[]; length: number; samples: number; seed: number },
): Generator<Sample> {
  return samples({
    corpus: o.corpus,
    data: o.data,
    tok,
    bos: c.bosTokenId,
    length: o.length,
    count: o.samples,
    seed: o.seed,
  });
}
