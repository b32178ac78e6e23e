/**
 * A two-layer MLP r = W₂ · SiLU(W₁ · x + b₁) + b₂ over N rows, its backward
 * pass, and the AdamW update: the numeric core of training Locret's retaining
 * heads. Plain typed-array loops, row-major, weights in [out, in] layout.
 */

/** The parameters of one MLP (and, with the same shapes, its gradients or Adam moments). */
export interface Mlp {
  /** [hidden, F] */
  w1: Float32Array;
  /** [hidden] */
  b1: Float32Array;
  /** [K, hidden] */
  w2: Float32Array;
  /** [K] */
  b2: Float32Array;
}

/** Activations kept by the forward pass for the backward pass. */
export interface MlpTape {
  /** Pre-activations [N, hidden]. */
  a: Float32Array;
  /** SiLU(a) [N, hidden]. */
  h: Float32Array;
  /** Outputs [N, K]. */
  r: Float32Array;
}

/** Zeroed parameters (or gradients) of the given shape. */
export function zeroMlp(F: number, hidden: number, K: number): Mlp {
  return {
    w1: new Float32Array(hidden * F),
    b1: new Float32Array(hidden),
    w2: new Float32Array(K * hidden),
    b2: new Float32Array(K),
  };
}

/** Forward over x [N, F]; returns the tape (r is the output [N, K]). */
export function mlpForward(p: Mlp, x: Float32Array, N: number, F: number): MlpTape {
  const hidden = p.b1.length;
  const K = p.b2.length;
  const a = new Float32Array(N * hidden);
  const h = new Float32Array(N * hidden);
  const r = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    const xo = n * F;
    for (let j = 0; j < hidden; j++) {
      const wo = j * F;
      let acc = p.b1[j];
      for (let i = 0; i < F; i++) acc += x[xo + i] * p.w1[wo + i];
      a[n * hidden + j] = acc;
      h[n * hidden + j] = acc / (1 + Math.exp(-acc));
    }
    for (let k = 0; k < K; k++) {
      let acc = p.b2[k];
      const wo = k * hidden;
      for (let j = 0; j < hidden; j++) acc += h[n * hidden + j] * p.w2[wo + j];
      r[n * K + k] = acc;
    }
  }
  return { a, h, r };
}

/** Backward: given dL/dr [N, K], accumulates dL/dθ into `grad` (no gradient for x: the model is frozen). */
export function mlpBackward(p: Mlp, x: Float32Array, N: number, F: number, tape: MlpTape, dr: Float32Array, grad: Mlp) {
  const hidden = p.b1.length;
  const K = p.b2.length;
  const da = new Float32Array(hidden);
  for (let n = 0; n < N; n++) {
    const ho = n * hidden;
    for (let k = 0; k < K; k++) {
      const g = dr[n * K + k];
      if (g === 0) continue;
      grad.b2[k] += g;
      const wo = k * hidden;
      for (let j = 0; j < hidden; j++) grad.w2[wo + j] += g * tape.h[ho + j];
    }
    for (let j = 0; j < hidden; j++) {
      let dh = 0;
      for (let k = 0; k < K; k++) dh += dr[n * K + k] * p.w2[k * hidden + j];
      const z = tape.a[ho + j];
      const s = 1 / (1 + Math.exp(-z));
      da[j] = dh * s * (1 + z * (1 - s)); // SiLU'(z) = σ(z)(1 + z(1 − σ(z)))
    }
    const xo = n * F;
    for (let j = 0; j < hidden; j++) {
      const g = da[j];
      if (g === 0) continue;
      grad.b1[j] += g;
      const wo = j * F;
      for (let i = 0; i < F; i++) grad.w1[wo + i] += g * x[xo + i];
    }
  }
}

const tensors = (m: Mlp) => [m.w1, m.b1, m.w2, m.b2];

/** Scales `grad` so its global L2 norm is at most `maxNorm`; returns the norm before clipping. */
export function clipGradNorm(grad: Mlp, maxNorm: number): number {
  let ss = 0;
  for (const t of tensors(grad)) for (let i = 0; i < t.length; i++) ss += t[i] * t[i];
  const norm = Math.sqrt(ss);
  if (norm > maxNorm && norm > 0) {
    const s = maxNorm / norm;
    for (const t of tensors(grad)) for (let i = 0; i < t.length; i++) t[i] *= s;
  }
  return norm;
}

/** AdamW's state for one MLP. */
export interface AdamState {
  m: Mlp;
  v: Mlp;
  step: number;
}

/** Fresh AdamW moments for parameters shaped like `p`. */
export function adamState(p: Mlp): AdamState {
  const F = p.w1.length / p.b1.length;
  return { m: zeroMlp(F, p.b1.length, p.b2.length), v: zeroMlp(F, p.b1.length, p.b2.length), step: 0 };
}

/** One AdamW step (decoupled weight decay on the weight matrices, not the biases). */
export function adamwStep(
  p: Mlp,
  grad: Mlp,
  st: AdamState,
  o: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number },
): void {
  st.step++;
  const c1 = 1 - o.beta1 ** st.step;
  const c2 = 1 - o.beta2 ** st.step;
  const ps = tensors(p), gs = tensors(grad), ms = tensors(st.m), vs = tensors(st.v);
  for (let t = 0; t < ps.length; t++) {
    const w = ps[t], g = gs[t], m = ms[t], v = vs[t];
    const decay = t % 2 === 0 ? o.weightDecay : 0;
    for (let i = 0; i < w.length; i++) {
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
      w[i] -= o.lr * ((m[i] / c1) / (Math.sqrt(v[i] / c2) + o.eps) + decay * w[i]);
    }
  }
}
