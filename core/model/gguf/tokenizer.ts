/**
 * Tokenizers in GGUF metadata (`tokenizer.ggml.*`) ↔ Hugging Face
 * `tokenizer.json`: byte-level BPE (`gpt2`: tokens, merges, a pre-tokenizer
 * named by `tokenizer.ggml.pre`) and SentencePiece BPE (`llama`: tokens,
 * scores, byte fallback; merges as stored, else derived from the scores).
 */
import { TomeError } from "../../errors.ts";
import { type GgufHeader, type GgufKv, meta } from "./format.ts";
import { kv } from "./writer.ts";

/** llama.cpp token types. */
const TT = { normal: 1, unknown: 2, control: 3, user: 4, unused: 5, byte: 6 } as const;

const LLAMA3_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const byteLevel = (useRegex: boolean) => ({
  type: "ByteLevel",
  add_prefix_space: false,
  trim_offsets: true,
  use_regex: useRegex,
});
const split = (regex: string) => ({
  type: "Split",
  pattern: { Regex: regex },
  behavior: "Isolated",
  invert: false,
});

/** `tokenizer.ggml.pre` → Hugging Face pre-tokenizer; names llama.cpp gives the same splitting share one. */
const PRE: Record<string, unknown> = {
  "gpt-2": byteLevel(true),
  smollm: { type: "Sequence", pretokenizers: [{ type: "Digits", individual_digits: true }, byteLevel(true)] },
  "llama-bpe": { type: "Sequence", pretokenizers: [split(LLAMA3_REGEX), byteLevel(false)] },
  qwen2: { type: "Sequence", pretokenizers: [split(QWEN2_REGEX), byteLevel(false)] },
};
PRE.starcoder = PRE.refact = PRE.codeshell = PRE.smollm;
PRE.llama3 = PRE["llama-bpe"];
PRE.mpt = PRE.olmo = PRE["gpt-2"];

/** Pre-tokenizer names tome maps exactly (others fall back to GPT-2's splitting). */
export const KNOWN_PRE = Object.keys(PRE);

/** A Hugging Face tokenizer built from GGUF metadata: `tokenizer.json` and `tokenizer_config.json` contents. */
export interface GgufTokenizer {
  kind: "gpt2" | "llama";
  json: Record<string, unknown>;
  config: Record<string, unknown>;
  /** Notes for the user (an unknown pre-tokenizer approximated). */
  notes: string[];
}

/** Builds a tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file. */
export function tokenizerFromGguf(h: GgufHeader): GgufTokenizer {
  const bad = (msg: string): never => {
    throw new TomeError("tokenizerInvalid", `${h.path}: ${msg}`);
  };
  const model = meta(h, "tokenizer.ggml.model");
  const tokens = meta(h, "tokenizer.ggml.tokens");
  if (model === undefined && tokens === undefined) {
    throw new TomeError("tokenizerMissing", `${h.path} has no tokenizer in its metadata (tokenizer.ggml.*)`);
  }
  if (model !== "gpt2" && model !== "llama") {
    bad(`tokenizer.ggml.model ${JSON.stringify(model)} is not supported (gpt2, llama)`);
  }
  if (!Array.isArray(tokens) || tokens.some((t) => typeof t !== "string")) bad("tokenizer.ggml.tokens is missing");
  const toks = tokens as string[];
  const rawTypes = meta(h, "tokenizer.ggml.token_type");
  const types = Array.isArray(rawTypes) && rawTypes.length === toks.length
    ? rawTypes as number[]
    : toks.map(() => TT.normal);
  const id = (key: string) => {
    const v = meta(h, `tokenizer.ggml.${key}`);
    return typeof v === "number" && v >= 0 && v < toks.length ? v : undefined;
  };
  const vocab: Record<string, number> = {};
  const added: Record<string, unknown>[] = [];
  for (let i = 0; i < toks.length; i++) {
    if (types[i] === TT.unused) continue;
    if (!(toks[i] in vocab)) vocab[toks[i]] = i;
    if (types[i] === TT.control || types[i] === TT.user || types[i] === TT.unknown) {
      added.push({
        id: i,
        content: toks[i],
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: types[i] === TT.user,
        special: types[i] !== TT.user,
      });
    }
  }
  const notes: string[] = [];
  let json: Record<string, unknown>;
  if (model === "gpt2") {
    const merges = meta(h, "tokenizer.ggml.merges");
    if (!Array.isArray(merges) || merges.some((m) => typeof m !== "string")) bad("tokenizer.ggml.merges is missing");
    const pre = String(meta(h, "tokenizer.ggml.pre") ?? "default");
    if (!(pre in PRE)) notes.push(`pre-tokenizer "${pre}" is approximated by GPT-2's splitting`);
    json = {
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: null,
      pre_tokenizer: PRE[pre] ?? PRE["gpt-2"],
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
        ignore_merges: pre === "llama-bpe" || pre === "llama3",
        vocab,
        merges,
      },
    };
  } else {
    const rawScores = meta(h, "tokenizer.ggml.scores");
    if (!Array.isArray(rawScores) || rawScores.length !== toks.length) bad("tokenizer.ggml.scores is missing");
    const scores = rawScores as number[];
    const rawMerges = meta(h, "tokenizer.ggml.merges");
    const storedMerges = Array.isArray(rawMerges) && rawMerges.length > 0 ? rawMerges as string[] : null;
    const unk = id("unknown_token_id") ?? types.indexOf(TT.unknown);
    const prefix = meta(h, "tokenizer.ggml.add_space_prefix") !== false;
    const replace = { type: "Replace", pattern: { String: " " }, content: "▁" };
    json = {
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: prefix
        ? { type: "Sequence", normalizers: [{ type: "Prepend", prepend: "▁" }, replace] }
        : { type: "Sequence", normalizers: [replace] },
      pre_tokenizer: null,
      post_processor: null,
      decoder: {
        type: "Sequence",
        decoders: [
          { type: "Replace", pattern: { String: "▁" }, content: " " },
          { type: "ByteFallback" },
          { type: "Fuse" },
          ...(prefix ? [{ type: "Strip", content: " ", start: 1, stop: 0 }] : []),
        ],
      },
      model: {
        type: "BPE",
        dropout: null,
        unk_token: unk >= 0 ? toks[unk] : null,
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: true,
        byte_fallback: true,
        vocab,
        merges: storedMerges ?? mergesFromScores(toks, scores, types),
      },
    };
  }
  const text = (key: string) => {
    const i = id(key);
    return i === undefined ? undefined : toks[i];
  };
  const config: Record<string, unknown> = {};
  for (
    const [k, key] of [
      ["bos_token", "bos_token_id"],
      ["eos_token", "eos_token_id"],
      ["unk_token", "unknown_token_id"],
      [
        "pad_token",
        "padding_token_id",
      ],
    ]
  ) {
    const t = text(key);
    if (t !== undefined) config[k] = t;
  }
  const template = meta(h, "tokenizer.chat_template");
  if (typeof template === "string" && template.length > 0) config.chat_template = template;
  const addBos = meta(h, "tokenizer.ggml.add_bos_token");
  config.add_bos_token = typeof addBos === "boolean" ? addBos : model === "llama";
  return { kind: model as "gpt2" | "llama", json, config, notes };
}

/**
 * SentencePiece BPE merges from token scores: every split of a normal token
 * into two tokens is a merge, ranked by the merged token's score (highest
 * first), as SentencePiece merges the best-scoring adjacent pair.
 */
export function mergesFromScores(tokens: string[], scores: number[], types: number[]): string[] {
  const ids = new Map<string, number>();
  tokens.forEach((t, i) => {
    if (types[i] === TT.normal && !ids.has(t)) ids.set(t, i);
  });
  const merges: { a: string; b: string; score: number; id: number; left: number }[] = [];
  for (const [t, i] of ids) {
    const chars = [...t];
    for (let k = 1; k < chars.length; k++) {
      const a = chars.slice(0, k).join("");
      const b = chars.slice(k).join("");
      const left = ids.get(a);
      if (left !== undefined && ids.has(b)) merges.push({ a, b, score: scores[i], id: i, left });
    }
  }
  merges.sort((x, y) => y.score - x.score || x.id - y.id || x.left - y.left);
  return merges.map((m) => `${m.a} ${m.b}`);
}

/** Token type names for `tome inspect`. */
export function tokenizerSummary(h: GgufHeader): { kind: string; tokens: number; pre: string | null } {
  const tokens = meta(h, "tokenizer.ggml.tokens");
  const pre = meta(h, "tokenizer.ggml.pre");
  return {
    kind: String(meta(h, "tokenizer.ggml.model") ?? "none"),
    tokens: Array.isArray(tokens) ? tokens.length : 0,
    pre: typeof pre === "string" ? pre : null,
  };
}

/**
 * The `tokenizer.ggml.*` metadata for a Hugging Face tokenizer (`tokenizer.json`
 * and `tokenizer_config.json`), padded to `vocab` tokens: byte-level BPE
 * becomes `gpt2`, BPE with byte fallback (SentencePiece-style) becomes `llama`.
 */
export function tokenizerMetadata(
  json: Record<string, unknown>,
  config: Record<string, unknown>,
  vocab: number,
  where: string,
): Map<string, GgufKv> {
  const bad = (msg: string): never => {
    throw new TomeError("tokenizerInvalid", `${where}: ${msg}`);
  };
  const model = json.model as Record<string, unknown> | undefined;
  if (model?.type !== "BPE" || typeof model.vocab !== "object" || model.vocab === null) {
    bad(`tokenizer model ${JSON.stringify(model?.type)} cannot be written to GGUF (BPE only)`);
  }
  const m = model as { vocab: Record<string, number>; merges?: unknown[]; byte_fallback?: boolean };
  const spm = m.byte_fallback === true;
  const byteLevel = JSON.stringify(json.pre_tokenizer ?? null).includes('"ByteLevel"');
  if (!spm && !byteLevel) bad("only byte-level BPE and SentencePiece-style BPE tokenizers can be written to GGUF");
  const addedTokens = (Array.isArray(json.added_tokens) ? json.added_tokens : []) as {
    id: number;
    content: string;
    special?: boolean;
  }[];
  const size = Math.max(vocab, ...Object.values(m.vocab).map((i) => i + 1), ...addedTokens.map((t) => t.id + 1));
  const tokens: (string | undefined)[] = new Array(size);
  const types = new Array<number>(size).fill(TT.normal);
  for (const [t, i] of Object.entries(m.vocab)) tokens[i] = t;
  for (const t of addedTokens) {
    tokens[t.id] = t.content;
    types[t.id] = t.special ? TT.control : TT.user;
  }
  for (let i = 0; i < size; i++) {
    if (tokens[i] === undefined) {
      tokens[i] = `[PAD${i}]`;
      types[i] = TT.unused;
    }
  }
  const merges = (m.merges ?? []).map((x) => (Array.isArray(x) ? x.join(" ") : String(x)));
  const out = new Map<string, GgufKv>();
  out.set("tokenizer.ggml.model", kv.str(spm ? "llama" : "gpt2"));
  if (spm) {
    const unk = typeof (model as { unk_token?: unknown }).unk_token === "string"
      ? m.vocab[(model as { unk_token: string }).unk_token]
      : undefined;
    if (unk !== undefined) types[unk] = TT.unknown;
    tokens.forEach((t, i) => {
      if (/^<0x[0-9A-F]{2}>$/.test(t!) && types[i] === TT.normal) types[i] = TT.byte;
    });
    // a token's score: minus the rank of the first merge that makes it, so higher scores merge first
    const scores = new Array<number>(size).fill(0);
    const made = new Set<number>();
    merges.forEach((mg, rank) => {
      const i = m.vocab[mg.replace(" ", "")];
      if (i !== undefined && !made.has(i)) {
        made.add(i);
        scores[i] = -rank;
      }
    });
    tokens.forEach((t, i) => {
      if (types[i] === TT.normal && !made.has(i) && [...t!].length > 1) scores[i] = -1e9;
    });
    out.set("tokenizer.ggml.tokens", kv.strs(tokens as string[]));
    out.set("tokenizer.ggml.scores", kv.f32s(scores));
    out.set("tokenizer.ggml.token_type", kv.i32s(types));
    // llama.cpp merges by score and ignores these; tome reads them back for the exact original merges
    if (merges.length > 0) out.set("tokenizer.ggml.merges", kv.strs(merges));
  } else {
    out.set("tokenizer.ggml.pre", kv.str(preName(json.pre_tokenizer)));
    out.set("tokenizer.ggml.tokens", kv.strs(tokens as string[]));
    out.set("tokenizer.ggml.token_type", kv.i32s(types));
    out.set("tokenizer.ggml.merges", kv.strs(merges));
  }
  const idOf = (key: string) => {
    const v = config[key];
    const t = typeof v === "string" ? v : (v as { content?: string } | undefined)?.content;
    const i = t === undefined ? -1 : tokens.indexOf(t);
    return i >= 0 ? i : undefined;
  };
  for (
    const [key, name] of [["bos_token", "bos"], ["eos_token", "eos"], ["unk_token", "unknown"], [
      "pad_token",
      "padding",
    ]]
  ) {
    const i = idOf(key);
    if (i !== undefined) out.set(`tokenizer.ggml.${name}_token_id`, kv.u32(i));
  }
  out.set("tokenizer.ggml.add_bos_token", kv.bool(config.add_bos_token === true));
  out.set("tokenizer.ggml.add_eos_token", kv.bool(config.add_eos_token === true));
  if (typeof config.chat_template === "string") out.set("tokenizer.chat_template", kv.str(config.chat_template));
  return out;
}

/** The llama.cpp pre-tokenizer name whose splitting matches a Hugging Face pre-tokenizer. */
function preName(pre: unknown): string {
  const s = JSON.stringify(pre ?? null);
  const plain = JSON.stringify(PRE["gpt-2"]);
  if (s.includes('"Digits"') && s.includes('"individual_digits":true') && s.includes('"use_regex":true')) {
    return "smollm";
  }
  if (s.includes("\\\\p{N}{1,3}")) return "llama-bpe";
  if (s.includes("[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}|")) return "qwen2";
  if (s === plain || (s.includes('"ByteLevel"') && s.includes('"use_regex":true') && !s.includes('"Split"'))) {
    return "gpt-2";
  }
  return "default";
}
