import type { ModelConfig } from "./config.ts";

/**
 * RoPE inverse frequencies θ_i = base^(−2i/d), i < d/2, in float32 as Hugging
 * Face computes them, with `rope_scaling` applied (linear: θ/factor; llama3:
 * low frequencies divided by the factor, high ones kept, a smooth blend between).
 */
export function inverseFrequencies(c: Pick<ModelConfig, "headDim" | "ropeTheta" | "ropeScaling">): Float32Array {
  const half = c.headDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(c.ropeTheta, (2 * i) / c.headDim);
  const s = c.ropeScaling;
  if (s?.type === "linear") {
    for (let i = 0; i < half; i++) inv[i] = inv[i] / s.factor;
  } else if (s?.type === "factors") {
    for (let i = 0; i < half; i++) inv[i] = inv[i] / s.factors[i];
  } else if (s?.type === "llama3") {
    const lowWavelen = s.originalMaxPositions / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositions / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      if (wavelen > lowWavelen) inv[i] = inv[i] / s.factor;
      else if (wavelen >= highWavelen) {
        const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[i] = (1 - smooth) * (inv[i] / s.factor) + smooth * inv[i];
      }
    }
  }
  return inv;
}

/**
 * Rotates `x` (one head, length d) in place to position `pos`, HF convention
 * (rotate-half): x' = x·cos(pθ) + rotate_half(x)·sin(pθ), with angles in float32.
 */
export function rotate(x: Float32Array, offset: number, pos: number, inv: Float32Array): void {
  const half = inv.length;
  for (let i = 0; i < half; i++) {
    const angle = Math.fround(pos * inv[i]);
    const cos = Math.fround(Math.cos(angle));
    const sin = Math.fround(Math.sin(angle));
    const a = x[offset + i];
    const b = x[offset + half + i];
    x[offset + i] = a * cos - b * sin;
    x[offset + half + i] = b * cos + a * sin;
  }
}

/** cos and sin of RoPE angles, each [n, d] row-major. */
export interface RopeTables {
  cos: Float32Array;
  sin: Float32Array;
}

/**
 * The graph's RoPE tables for `positions`: row p holds cos (sin) of
 * positions[p]·θ_i at columns i and i + d/2 (rotate-half convention), angle and
 * value rounded to float32 exactly as {@link rotate} computes them. The graph
 * takes them as inputs so that no Cos/Sin runs inside it (onnxruntime 1.30's
 * WebGPU provider has no kernel for them). Cost: about 1.6 ms of CPU for
 * n = 512, d = 128, about what onnxruntime's Cos/Sin took (1.0–1.5 ms).
 */
export function ropeTables(positions: ArrayLike<number>, inv: Float32Array): RopeTables {
  const half = inv.length;
  const d = 2 * half;
  const cos = new Float32Array(positions.length * d);
  const sin = new Float32Array(positions.length * d);
  for (let p = 0; p < positions.length; p++) {
    const pos = positions[p];
    const row = p * d;
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(pos * inv[i]);
      cos[row + i] = cos[row + half + i] = Math.cos(angle);
      sin[row + i] = sin[row + half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
