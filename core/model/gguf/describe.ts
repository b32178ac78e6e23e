/** What `tome inspect FILE.gguf` shows beyond the config: format version, quantization mix, tokenizer, template. */
import { type GgufHeader, meta } from "./format.ts";
import { tokenizerSummary } from "./tokenizer.ts";

/** A GGUF file's format details. */
export interface GgufDescription {
  version: number;
  name: string | null;
  /** Per GGML type: tensor count and bytes, largest first. */
  types: { type: string; tensors: number; bytes: number }[];
  tokenizer: { kind: string; tokens: number; pre: string | null };
  chatTemplate: boolean;
}

/** Describes a GGUF header. */
export function describeGguf(h: GgufHeader): GgufDescription {
  const mix = new Map<string, { tensors: number; bytes: number }>();
  for (const t of h.tensors) {
    const m = mix.get(t.type) ?? { tensors: 0, bytes: 0 };
    m.tensors++;
    m.bytes += t.bytes;
    mix.set(t.type, m);
  }
  const name = meta(h, "general.name");
  const template = meta(h, "tokenizer.chat_template");
  return {
    version: h.version,
    name: typeof name === "string" ? name : null,
    types: [...mix].map(([type, m]) => ({ type, ...m })).sort((a, b) => b.bytes - a.bytes),
    tokenizer: tokenizerSummary(h),
    chatTemplate: typeof template === "string" && template.length > 0,
  };
}
