/**
 * DuoAttention's gates (Xiao et al., arXiv 2410.10819), trained layer by
 * layer. Each KV head k of a layer has a gate α_k ∈ [0, 1]; every query head h
 * of its group mixes full attention and streaming attention (the first
 * `sinks` and last `recent` cache entries, plus the new tokens):
 *
 *   mix_h = α_k · full_h + (1 − α_k) · stream_h
 *
 * and the layer writes o_proj(mix) into the residual. DuoAttention trains the
 * gates, the model frozen, so that the mixed model's last hidden states match
 * the full model's on synthetic retrieval samples, plus λ·Σα (L1); PruLong
 * (arXiv 2506.17121) trains the same gates with a hard-concrete (L0) mask and
 * the next-token loss.
 *
 * The approximation here is layerwise teacher forcing: each layer's inputs are
 * those of the full-attention run, and the distance is measured at that
 * layer's attention output, not at the last hidden state. Then the mixed
 * output is linear in α and the loss is a small quadratic per layer. With
 * β = 1 − α and, per query position s after the needle (the window that
 * predicts the answer),
 *
 *   u_k[s] = Σ_{h ∈ group k} Wo[:, h] · (full_h[s] − stream_h[s])      (∈ ℝ^D)
 *   o_proj(mix)[s] − o_proj(full)[s] = −Σ_k β_k u_k[s]
 *
 * the loss of a layer is
 *
 *   L(α) = Σ_s ‖Σ_k β_k u_k[s]‖² / E + λ Σ_k α_k = βᵀ G β / E + λ Σ_k α_k
 *   G_jk = Σ_s u_j[s] · u_k[s],   E = Σ_s ‖Wo · full[s]‖²
 *   ∂L/∂α_k = −2 (G β)_k / E + λ
 *
 * (E makes the distortion relative, so one λ serves every layer.) It is
 * minimized by projected gradient descent on [0, 1]^K from α = 1, the gates'
 * start in DuoAttention. What is lost against end-to-end training: a head's
 * effect on later layers (through the residual) is not seen, and the gates of
 * different layers do not trade off against each other except through λ.
 */
import type { ModelConfig } from "../model/config.ts";

/** One layer's attention inputs for the S queries of a window that follows P cached entries. */
export interface LayerInputs {
  /** Queries after norms and RoPE, [S, H, d]. */
  q: Float32Array;
  /** Keys (rotated) and values, [K, P + S, d]: the cache, then the window's own. */
  keys: Float32Array;
  values: Float32Array;
  S: number;
  P: number;
}

/** Full and streaming attention outputs of each query head, [S, H, d] each. */
export interface HeadOutputs {
  full: Float32Array;
  stream: Float32Array;
}

/**
 * Attention of each query head over every entry (full) and over the entries a
 * streaming head keeps (cache slots t < sinks or t ≥ P − recent, and the
 * window's own tokens, causally).
 */
export function headOutputs(c: ModelConfig, a: LayerInputs, sinks: number, recent: number): HeadOutputs {
  const { heads: H, kvHeads: K, headDim: d } = c;
  const { S, P } = a;
  const T = P + S;
  const g = H / K;
  const scale = 1 / Math.sqrt(d);
  const full = new Float32Array(S * H * d);
  const stream = new Float32Array(S * H * d);
  const score = new Float64Array(T);
  const accF = new Float64Array(d), accS = new Float64Array(d);
  for (let h = 0; h < H; h++) {
    const kv = Math.floor(h / g);
    for (let s = 0; s < S; s++) {
      const qo = (s * H + h) * d;
      const n = P + s + 1;
      let max = -Infinity, maxS = -Infinity;
      for (let t = 0; t < n; t++) {
        let dot = 0;
        for (let i = 0; i < d; i++) dot += a.q[qo + i] * a.keys[(kv * T + t) * d + i];
        score[t] = dot * scale;
        if (score[t] > max) max = score[t];
        if (kept(t, P, sinks, recent) && score[t] > maxS) maxS = score[t];
      }
      accF.fill(0);
      accS.fill(0);
      let zF = 0, zS = 0;
      for (let t = 0; t < n; t++) {
        const pF = Math.exp(score[t] - max);
        const pS = kept(t, P, sinks, recent) ? Math.exp(score[t] - maxS) : 0;
        zF += pF;
        zS += pS;
        const vo = (kv * T + t) * d;
        for (let i = 0; i < d; i++) {
          accF[i] += pF * a.values[vo + i];
          accS[i] += pS * a.values[vo + i];
        }
      }
      for (let i = 0; i < d; i++) {
        full[qo + i] = accF[i] / zF;
        stream[qo + i] = accS[i] / zS;
      }
    }
  }
  return { full, stream };
}

/** Whether a streaming head sees entry t (the window's own tokens always; the cache's sinks and recent). */
function kept(t: number, P: number, sinks: number, recent: number): boolean {
  return t >= P || t < sinks || t >= P - recent;
}

/** What a layer's gates train on, summed over samples: G [K, K] and E (see the module comment). */
export interface GateStats {
  gram: Float64Array;
  energy: number;
  /** Query positions summed. */
  positions: number;
}

/** Empty statistics for K heads. */
export const emptyStats = (K: number): GateStats => ({ gram: new Float64Array(K * K), energy: 0, positions: 0 });

/**
 * u_k[s] = Σ_{h ∈ group k} Wo[:, h] (full_h[s] − stream_h[s]) for each KV head k, [K, S, D];
 * and y[s] = Wo · full[s], [S, D]. `wo` is [D, H·d] (Hugging Face layout).
 */
export function gateDirections(
  c: ModelConfig,
  wo: Float32Array,
  o: HeadOutputs,
  S: number,
): { u: Float64Array; y: Float64Array } {
  const { heads: H, kvHeads: K, headDim: d, hidden: D } = c;
  const g = H / K, W = H * d;
  const u = new Float64Array(K * S * D);
  const y = new Float64Array(S * D);
  for (let s = 0; s < S; s++) {
    for (let j = 0; j < D; j++) {
      const row = j * W;
      let all = 0;
      for (let h = 0; h < H; h++) {
        const x = (s * H + h) * d;
        let diff = 0;
        for (let i = 0; i < d; i++) {
          const w = wo[row + h * d + i];
          all += w * o.full[x + i];
          diff += w * (o.full[x + i] - o.stream[x + i]);
        }
        u[(Math.floor(h / g) * S + s) * D + j] += diff;
      }
      y[s * D + j] = all;
    }
  }
  return { u, y };
}

/** Adds one window's G and E to `stats`. */
export function accumulate(stats: GateStats, u: Float64Array, y: Float64Array, K: number, S: number, D: number) {
  const n = S * D;
  for (let a = 0; a < K; a++) {
    for (let b = a; b < K; b++) {
      let dot = 0;
      for (let i = 0; i < n; i++) dot += u[a * n + i] * u[b * n + i];
      stats.gram[a * K + b] += dot;
      if (a !== b) stats.gram[b * K + a] += dot;
    }
  }
  for (let i = 0; i < n; i++) stats.energy += y[i] * y[i];
  stats.positions += S;
}

/** The layer's loss L(α) = βᵀGβ / E + λΣα and its gradient ∂L/∂α = −2Gβ / E + λ. */
export function gateLoss(stats: GateStats, alpha: ArrayLike<number>, lambda: number): { loss: number; grad: number[] } {
  const K = alpha.length;
  const E = stats.energy > 0 ? stats.energy : 1;
  const beta = Array.from(alpha, (a) => 1 - a);
  const gb = beta.map((_, j) => beta.reduce((acc, b, k) => acc + stats.gram[j * K + k] * b, 0));
  const quad = beta.reduce((acc, b, j) => acc + b * gb[j], 0);
  const loss = quad / E + lambda * Array.from(alpha).reduce((x, y) => x + y, 0);
  return { loss, grad: gb.map((v) => -2 * v / E + lambda) };
}

/**
 * Projected gradient descent on [0, 1]^K from α = 1, step 1 / (2·trace(G)/E)
 * (trace(G) bounds G's largest eigenvalue, so the step never overshoots);
 * stops when no gate moves by more than `tol`.
 */
export function trainGates(
  stats: GateStats,
  lambda: number,
  steps: number,
  tol = 1e-10,
): { alpha: number[]; loss: number; steps: number } {
  const K = Math.round(Math.sqrt(stats.gram.length));
  const E = stats.energy > 0 ? stats.energy : 1;
  let trace = 0;
  for (let k = 0; k < K; k++) trace += stats.gram[k * K + k];
  const eta = trace > 0 ? E / (2 * trace) : 1;
  const alpha = new Array(K).fill(1);
  let done = 0;
  while (done < steps) {
    const { grad } = gateLoss(stats, alpha, lambda);
    let moved = 0;
    for (let k = 0; k < K; k++) {
      const next = Math.min(1, Math.max(0, alpha[k] - eta * grad[k]));
      moved = Math.max(moved, Math.abs(next - alpha[k]));
      alpha[k] = next;
    }
    done++;
    if (moved <= tol) break;
  }
  return { alpha, loss: gateLoss(stats, alpha, lambda).loss, steps: done };
}
