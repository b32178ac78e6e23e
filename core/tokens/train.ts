/**
 * A byte-level BPE tokenizer learned from text, written as a standard Hugging
 * Face `tokenizer.json` — so a model can be made on a machine with nothing but
 * the project (see `tome make-model retrieval` without --tokenizer).
 *
 * Pre-tokenization as SmolLM2 and GPT-2 do it: digits split one by one, then
 * the GPT-2 regex over bytes mapped to printable characters. Merges are learned
 * greedily: the most frequent adjacent pair (ties: the smallest pair), merged
 * everywhere, pair counts updated incrementally. Deterministic.
 */

/** GPT-2's pre-tokenization pattern. */
const PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Special tokens, ids 0–2 (ChatML names, as SmolLM2). */
export const SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/** GPT-2's reversible map from bytes to printable characters. */
export function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const map = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    map[b] = printable.includes(b) ? String.fromCharCode(b) : String.fromCharCode(256 + extra++);
  }
  return map;
}

/** The pre-tokenized words of `text` (digits apart), as byte-level strings with their counts. */
function countWords(text: string): Map<string, number> {
  const map = bytesToUnicode();
  const enc = new TextEncoder();
  const counts = new Map<string, number>();
  for (const piece of text.split(/(\p{N})/u)) {
    if (!piece) continue;
    for (const m of piece.matchAll(PATTERN)) {
      const word = Array.from(enc.encode(m[0]), (b) => map[b]).join("");
      counts.set(word, (counts.get(word) ?? 0) + 1);
    }
  }
  return counts;
}

export interface TrainedTokenizer {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  vocabSize: number;
}

/** Learns a byte-level BPE of `vocabSize` entries (specials and the 256 bytes included) from `text`. */
export function trainBpe(text: string, vocabSize: number): TrainedTokenizer {
  const base = bytesToUnicode();
  const vocab = new Map<string, number>();
  for (const s of SPECIALS) vocab.set(s, vocab.size);
  for (const ch of [...base].sort()) vocab.set(ch, vocab.size);

  const counts = countWords(text);
  const words: string[][] = [];
  const freq: number[] = [];
  for (const [w, n] of [...counts].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    words.push([...w]);
    freq.push(n);
  }
  const pairCount = new Map<string, number>();
  const pairWords = new Map<string, Set<number>>();
  const key = (a: string, b: string) => `${a} ${b}`;
  const addPairs = (wi: number, sign: number) => {
    const w = words[wi];
    for (let i = 0; i + 1 < w.length; i++) {
      const k = key(w[i], w[i + 1]);
      pairCount.set(k, (pairCount.get(k) ?? 0) + sign * freq[wi]);
      if (sign > 0) {
        let set = pairWords.get(k);
        if (!set) pairWords.set(k, set = new Set());
        set.add(wi);
      }
    }
  };
  for (let wi = 0; wi < words.length; wi++) addPairs(wi, 1);

  const merges: string[] = [];
  while (vocab.size < vocabSize) {
    let best = "";
    let bestCount = 0;
    for (const [k, n] of pairCount) {
      if (n > bestCount || (n === bestCount && n > 0 && k < best)) {
        best = k;
        bestCount = n;
      }
    }
    if (bestCount < 2) break; // nothing left worth merging
    const [a, b] = best.split(" ");
    const merged = a + b;
    merges.push(best);
    vocab.set(merged, vocab.size);
    for (const wi of [...(pairWords.get(best) ?? [])]) {
      addPairs(wi, -1);
      const w = words[wi];
      const out: string[] = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) {
          out.push(merged);
          i++;
        } else out.push(w[i]);
      }
      words[wi] = out;
      addPairs(wi, 1);
    }
    pairCount.delete(best);
    pairWords.delete(best);
  }

  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: SPECIALS.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [
        { type: "Digits", individual_digits: true },
        { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
      ],
    },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  };
  const tokenizerConfig = {
    add_prefix_space: false,
    bos_token: SPECIALS[1],
    eos_token: SPECIALS[2],
    unk_token: SPECIALS[0],
    model_max_length: 65536,
    clean_up_tokenization_spaces: false,
    tokenizer_class: "GPT2Tokenizer",
    tome: { trained: "byte-level BPE learned from the project's own text", vocab_size: vocab.size },
  };
  return { tokenizerJson, tokenizerConfig, vocabSize: vocab.size };
}
