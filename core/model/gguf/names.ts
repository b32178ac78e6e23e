/**
 * llama.cpp's tensor names and Q/K row order, mapped to the Hugging Face names
 * and layout tome's builder uses.
 */
import type { Arch } from "../config.ts";

const GLOBAL: [string, string][] = [
  ["token_embd.weight", "model.embed_tokens.weight"],
  ["output_norm.weight", "model.norm.weight"],
  ["output.weight", "lm_head.weight"],
];

const LAYER: [string, string][] = [
  ["attn_norm.weight", "input_layernorm.weight"],
  ["attn_q.weight", "self_attn.q_proj.weight"],
  ["attn_q.bias", "self_attn.q_proj.bias"],
  ["attn_k.weight", "self_attn.k_proj.weight"],
  ["attn_k.bias", "self_attn.k_proj.bias"],
  ["attn_v.weight", "self_attn.v_proj.weight"],
  ["attn_v.bias", "self_attn.v_proj.bias"],
  ["attn_output.weight", "self_attn.o_proj.weight"],
  ["attn_output.bias", "self_attn.o_proj.bias"],
  ["attn_q_norm.weight", "self_attn.q_norm.weight"],
  ["attn_k_norm.weight", "self_attn.k_norm.weight"],
  ["ffn_norm.weight", "post_attention_layernorm.weight"],
  ["ffn_gate.weight", "mlp.gate_proj.weight"],
  ["ffn_gate.bias", "mlp.gate_proj.bias"],
  ["ffn_up.weight", "mlp.up_proj.weight"],
  ["ffn_up.bias", "mlp.up_proj.bias"],
  ["ffn_down.weight", "mlp.down_proj.weight"],
  ["ffn_down.bias", "mlp.down_proj.bias"],
];
const TO_HF = new Map(LAYER);
const TO_GGUF = new Map(LAYER.map(([a, b]) => [b, a]));

/** The Hugging Face name of a GGUF tensor (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`), or null. */
export function hfName(gguf: string): string | null {
  for (const [g, hf] of GLOBAL) if (g === gguf) return hf;
  const m = /^blk\.(\d+)\.(.+)$/.exec(gguf);
  const suffix = m ? TO_HF.get(m[2]) : undefined;
  return m && suffix ? `model.layers.${m[1]}.${suffix}` : null;
}

/** The GGUF name of a Hugging Face tensor, or null. */
export function ggufName(hf: string): string | null {
  for (const [g, h] of GLOBAL) if (h === hf) return g;
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  const suffix = m ? TO_GGUF.get(m[2]) : undefined;
  return m && suffix ? `blk.${m[1]}.${suffix}` : null;
}

/** The GGUF architecture name tome writes for a Hugging Face one (Mistral is `llama` in llama.cpp). */
export function ggufArch(arch: Arch): "llama" | "qwen2" | "qwen3" {
  return arch === "mistral" ? "llama" : arch;
}

/**
 * Which projection rows llama.cpp permutes for an architecture: the `llama`
 * architecture uses interleaved ("normal") RoPE, so its converter reorders
 * q_proj/k_proj rows from rotate-half to interleaved pairs; qwen2 and qwen3 use
 * NEOX (rotate-half) RoPE and keep the Hugging Face order. Returns the head
 * count to permute `name` with, or 0 for none.
 */
export function permuteHeads(ggufArchName: string, hf: string, heads: number, kvHeads: number): number {
  if (ggufArchName !== "llama") return 0;
  if (/self_attn\.q_proj\.(weight|bias)$/.test(hf)) return heads;
  if (/self_attn\.k_proj\.(weight|bias)$/.test(hf)) return kvHeads;
  return 0;
}

/**
 * Reorders the rows of a [heads·d, cols] matrix (or a bias, cols = 1) between
 * rotate-half order (row h·d + i·d/2 + j) and interleaved order (row h·d + 2j + i):
 * `toGgml` true permutes as llama.cpp's converter does, false undoes it. Rows of
 * MatMulNBits blocks (bytes, or scales) permute the same way, `cols` being a row's length.
 */
export function permuteRows<T extends Float32Array | Uint8Array>(
  w: T,
  heads: number,
  cols: number,
  toGgml: boolean,
): T {
  const rows = w.length / cols;
  const d = rows / heads;
  const half = d / 2;
  const out = (w instanceof Float32Array ? new Float32Array(w.length) : new Uint8Array(w.length)) as T;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < half; j++) {
        const hfRow = h * d + i * half + j;
        const ggRow = h * d + 2 * j + i;
        const [from, to] = toGgml ? [hfRow, ggRow] : [ggRow, hfRow];
        out.set(w.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return out;
}
