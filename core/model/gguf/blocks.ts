/**
 * GGUF matrices whose blocks go into the graph unchanged (Q8_0, Q4_0 → MatMulNBits blocks of 32): from the
 * file's bytes to Hugging Face layout (q/k rows un-permuted for `llama`, whole rows, so blocks stay whole), and
 * the same path for the graph-builder probe (`graph_digest.ts`), so the cache key covers it.
 */
import { ggufBlockQuant, takesUnchanged } from "../../../kernels/gguf_blocks.ts";
import type { BlockQuant } from "../../../kernels/quant.ts";
import type { Checkpoint } from "../checkpoint.ts";
import { loadTensor } from "../checkpoint.ts";
import type { ModelConfig } from "../config.ts";
import { encodeTensor } from "./convert.ts";
import { ggufArch, permuteHeads, permuteRows } from "./names.ts";

/** A [rows, cols] tensor's bytes of GGML type `type`, as the file stores it, → `bits`-wide blocks in HF layout. */
export function fileBlocks(
  arch: string,
  config: ModelConfig,
  name: string,
  type: string,
  bytes: Uint8Array,
  rows: number,
  cols: number,
  bits: 4 | 8,
): BlockQuant {
  const q = ggufBlockQuant(type, bytes, rows, cols, bits);
  const heads = permuteHeads(arch, name, config.heads, config.kvHeads);
  if (!heads) return q;
  return {
    ...q,
    data: permuteRows(q.data, heads, q.data.length / rows, false),
    scales: permuteRows(q.scales, heads, q.scales.length / rows, false),
  };
}

/**
 * The builder probe's `readBlocks`: each matrix with whole blocks of 32 encoded as a GGUF file would hold it
 * (Q8_0 for 8 bits, Q4_0 for 4; q/k rows permuted for `llama`) and read back through {@link fileBlocks}.
 */
export function probeReadBlocks(ckpt: Checkpoint): (name: string, bits: 4 | 8) => Promise<BlockQuant | null> {
  const arch = ggufArch(ckpt.config.arch);
  return async (name, bits) => {
    const info = ckpt.tensors.get(name);
    const type = bits === 8 ? "Q8_0" : "Q4_0";
    if (!info || info.shape.length !== 2 || info.shape[1] % 32 !== 0 || !takesUnchanged(type, bits)) return null;
    const [rows, cols] = info.shape;
    const w = await loadTensor(ckpt, name);
    const heads = permuteHeads(arch, name, ckpt.config.heads, ckpt.config.kvHeads);
    const bytes = encodeTensor(type, heads ? permuteRows(w, heads, cols, true) : w);
    return fileBlocks(arch, ckpt.config, name, type, bytes, rows, cols, bits);
  };
}
