import { rng } from "./helpers.ts";

const WORDS = [
  "the",
  "pass",
  "code",
  "of",
  "Natasha",
  "is",
  "war",
  "peace",
  "héllo",
  "naïve",
  "façade",
  "漢字",
  "かな",
  "Привет",
  "мир",
  "👩‍👩‍👧",
  "🎉",
  "e\u0301",
  "1234567",
  "3.14159",
  "foo_bar(x)",
  "{",
  "}",
  "return",
  "y;",
  "<|im_end|>",
  "don't",
  "--",
  "—",
  "“quoted”",
  "\t",
  "x\u00a0y",
  "ǅ",
  "𝔘𝔫𝔦",
  "ＡＢＣ",
];
const GAPS = [" ", " ", " ", " ", "  ", "\n", "\n\n", "\r\n", "\n   ", "   \n", "\t", " \n \n"];

/** Deterministic text that stresses tokenization: many scripts, emoji, combining marks, odd spacing, special-token text. */
export function mixedText(seed: number, chars: number): string {
  const r = rng(seed);
  const parts: string[] = [];
  let n = 0;
  while (n < chars) {
    const w = WORDS[Math.floor(r() * WORDS.length)];
    const g = GAPS[Math.floor(r() * GAPS.length)];
    parts.push(w, g);
    n += w.length + g.length;
  }
  return parts.join("");
}

/** Bytes of `text` with invalid UTF-8 sprinkled in (lone continuation bytes, truncated sequences, 0xFF). */
export function withInvalidUtf8(text: string, seed: number): Uint8Array {
  const r = rng(seed);
  const good = new TextEncoder().encode(text);
  const bad = [[0xff], [0x80], [0xe2, 0x82], [0xf0, 0x9f, 0x98], [0xc3]];
  const out: number[] = [];
  for (let i = 0; i < good.length; i++) {
    // insert only before an ASCII byte so that valid characters stay whole
    if (good[i] < 0x80 && r() < 0.002) out.push(...bad[Math.floor(r() * bad.length)]);
    out.push(good[i]);
  }
  return Uint8Array.from(out);
}

/**
 * A Llama-2-style tokenizer.json (sentencepiece BPE: `▁` prepended and for
 * spaces, no pre-tokenizer, byte fallback) with a small vocabulary, to prove
 * streaming tokenization on tokenizers with start-of-text effects.
 */
export function sentencepieceStyleTokenizer(): Record<string, unknown> {
  const vocab: Record<string, number> = { "<unk>": 0, "<s>": 1, "</s>": 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`] = 3 + b;
  const add = (t: string) => {
    if (!(t in vocab)) vocab[t] = Object.keys(vocab).length;
  };
  for (const ch of "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-_{}<>|") add(ch);
  const pairs = [
    "▁ t",
    "h e",
    "▁t he",
    "i n",
    "e r",
    "a n",
    "o n",
    "▁ a",
    "r e",
    "e n",
    "▁ s",
    "▁ w",
    "▁ o",
    "o u",
    "i s",
    "▁ p",
    "a s",
    "▁p as",
    "▁pas s",
    "c o",
    "▁ c",
    "▁c o",
    "▁co d",
    "d e",
    "▁cod e",
    "▁o f",
    "a r",
    "▁w ar",
    "e a",
    "▁ ▁",
    "▁▁ ▁▁",
    "r n",
    "u rn",
    "re t",
    "ret urn",
    "▁ return",
  ];
  const merges: string[] = [];
  for (const p of pairs) {
    const [a, b] = p.split(" ");
    add(a);
    add(b);
    add(a + b);
    merges.push(p);
  }
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: ["<unk>", "<s>", "</s>"].map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: {
      type: "Sequence",
      normalizers: [{ type: "Prepend", prepend: "▁" }, { type: "Replace", pattern: { String: " " }, content: "▁" }],
    },
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges,
    },
  };
}
