import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { join } from "node:path";
import { fsError, TomeError } from "../errors.ts";
import { isGgufModel } from "../model/gguf/checkpoint.ts";
import { ggufTokenizer } from "../model/gguf/load_tokenizer.ts";

/** A loaded tokenizer: the Hugging Face `tokenizer.json` pipeline plus its config. */
export interface Tokenizer {
  /**
   * Token ids of document text: no special tokens added, and special-token
   * strings in it ("<|im_end|>") are plain text, so a document cannot end the
   * user's turn or the answer.
   */
  encode(text: string): number[];
  /** Token ids of a rendered prompt (chat template): special-token strings are special tokens. */
  encodePrompt(text: string): number[];
  /** Text of `ids` (special tokens kept unless `skipSpecial`). */
  decode(ids: ArrayLike<number>, skipSpecial?: boolean): string;
  /** The token string of one id, e.g. `"Ġworld"`, or undefined. */
  idToToken(id: number): string | undefined;
  /** Id of a token string, e.g. `"<|im_end|>"`, or undefined. */
  tokenToId(token: string): number | undefined;
  /** Number of ids, added tokens included. */
  vocabSize: number;
  /** `tokenizer_config.json` (chat template, special tokens), `{}` when absent. */
  config: Record<string, unknown>;
  /** The directory it was loaded from. */
  dir: string;
}

/**
 * Loads `tokenizer.json` (required) and `tokenizer_config.json` (optional)
 * from a model or tokenizer directory.
 *
 * @example
 * const tok = await loadTokenizer("../shared/fixtures/smollm2-tokenizer");
 * tok.encode("Hello world"); // [19556, 905]
 */
export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  if (isGgufModel(dir)) return ggufTokenizer(dir);
  const jsonPath = join(dir, "tokenizer.json");
  let text: string;
  try {
    const st = await Deno.stat(dir);
    if (!st.isDirectory) throw new TomeError("tokenizerMissing", `tokenizer path is not a directory: ${dir}`);
    text = await Deno.readTextFile(jsonPath);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new TomeError("tokenizerMissing", `no tokenizer.json in ${dir}`);
    }
    throw fsError(err, jsonPath, "tokenizer");
  }
  const json = parseJson(text, jsonPath);
  let config: Record<string, unknown> = {};
  try {
    config = parseJson(await Deno.readTextFile(join(dir, "tokenizer_config.json")), join(dir, "tokenizer_config.json"));
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return tokenizerFromJson(json, config, dir);
}

/** A tokenizer from `tokenizer.json` and `tokenizer_config.json` contents; `dir` names where they came from. */
export function tokenizerFromJson(
  json: Record<string, unknown>,
  config: Record<string, unknown>,
  dir: string,
): Tokenizer {
  let hf: HfTokenizer;
  let plain: HfTokenizer;
  try {
    hf = new HfTokenizer(json, config);
    hf.encode("tome", { add_special_tokens: false });
    // the same pipeline without its special added tokens, for document text
    const added = Array.isArray(json.added_tokens) ? json.added_tokens as { special?: boolean }[] : [];
    plain = added.some((t) => t.special)
      ? new HfTokenizer({ ...json, added_tokens: added.filter((t) => !t.special) }, config)
      : hf;
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new TomeError("tokenizerInvalid", `tokenizer.json in ${dir} is not a usable tokenizer: ${msg}`);
  }
  const vocab = hf.get_vocab(true);
  let vocabSize = 0;
  for (const id of vocab.values()) vocabSize = Math.max(vocabSize, id + 1);
  return {
    encode: (s) => plain.encode(s, { add_special_tokens: false }).ids,
    encodePrompt: (s) => hf.encode(s, { add_special_tokens: false }).ids,
    decode: (ids, skipSpecial = false) =>
      ids.length === 0 ? "" : hf.decode(Array.from(ids), {
        skip_special_tokens: skipSpecial,
        clean_up_tokenization_spaces: false,
      }),
    idToToken: (id) => hf.id_to_token(id),
    tokenToId: (t) => hf.token_to_id(t),
    vocabSize,
    config,
    dir,
  };
}

function parseJson(text: string, path: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new TomeError("tokenizerInvalid", `${path} is not valid JSON: ${msg}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TomeError("tokenizerInvalid", `${path} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}
