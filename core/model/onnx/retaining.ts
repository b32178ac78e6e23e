/**
 * Locret's retaining heads (Huang et al., arXiv 2410.01805) inside the graph:
 * per layer a small MLP over each token's concatenated query, key and value
 * projections (before norms and RoPE) that gives one importance score per KV
 * head: r = W₂ · SiLU(W₁ · [q; k; v] + b₁) + b₂.
 *
 * Weights file (safetensors): `retaining_heads.{L}.w1` [hidden, H·d + 2·Hkv·d],
 * `.b1` [hidden], `.w2` [Hkv, hidden], `.b2` [Hkv] for every layer L.
 */
import { TomeError } from "../../errors.ts";
import type { ModelConfig } from "../config.ts";
import { readHeader, readTensor } from "../safetensors.ts";
import type { Graph } from "./graph.ts";

export interface RetainingHead {
  /** [hidden, F], [hidden], [Hkv, hidden], [Hkv] with F = H·d + 2·Hkv·d. */
  w1: Float32Array;
  b1: Float32Array;
  w2: Float32Array;
  b2: Float32Array;
  hidden: number;
}

/** The tensor names of layer l's retaining head. */
export const retainingNames = (l: number) => ({
  w1: `retaining_heads.${l}.w1`,
  b1: `retaining_heads.${l}.b1`,
  w2: `retaining_heads.${l}.w2`,
  b2: `retaining_heads.${l}.b2`,
});

/** Reads and checks every layer's retaining head. */
export async function readRetainingHeads(path: string, c: ModelConfig): Promise<RetainingHead[]> {
  const tensors = await readHeader(path);
  const F = c.heads * c.headDim + 2 * c.kvHeads * c.headDim;
  const heads: RetainingHead[] = [];
  for (let l = 0; l < c.layers; l++) {
    const n = retainingNames(l);
    const get = (name: string) => {
      const t = tensors.get(name);
      if (!t) throw new TomeError("modelInvalid", `${path}: missing ${name} (retaining heads for ${c.layers} layers)`);
      return t;
    };
    const hidden = get(n.w1).shape[0];
    const want: Record<string, number[]> = {
      [n.w1]: [hidden, F],
      [n.b1]: [hidden],
      [n.w2]: [c.kvHeads, hidden],
      [n.b2]: [c.kvHeads],
    };
    for (const [name, shape] of Object.entries(want)) {
      if (get(name).shape.join() !== shape.join()) {
        throw new TomeError(
          "modelInvalid",
          `${path}: ${name} has shape [${get(name).shape}], the model needs [${shape}]`,
        );
      }
    }
    heads.push({
      w1: await readTensor(get(n.w1)),
      b1: await readTensor(get(n.b1)),
      w2: await readTensor(get(n.w2)),
      b2: await readTensor(get(n.b2)),
      hidden,
    });
  }
  return heads;
}

/** Adds layer l's retaining head over q, k, v projections [1, S, ·]; returns its scores [1, Hkv, S]. */
export function retainingHead(g: Graph, h: RetainingHead, q: string, k: string, v: string): string {
  return g.within("retain", () => {
    const F = h.w1.length / h.hidden;
    const K = h.b2.length;
    const x = g.op("Concat", [q, k, v], { axis: -1 }); // [1,S,F]
    const w1 = g.weight("w1", "float32", [h.hidden, F], h.w1);
    const w2 = g.weight("w2", "float32", [K, h.hidden], h.w2);
    const a = g.op("Add", [g.op("MatMul", [x, g.op("Transpose", [w1])]), g.weight("b1", "float32", [h.hidden], h.b1)]);
    const hid = g.op("Mul", [a, g.op("Sigmoid", [a])]);
    const r = g.op("Add", [g.op("MatMul", [hid, g.op("Transpose", [w2])]), g.weight("b2", "float32", [K], h.b2)]);
    return g.op("Transpose", [r], { perm: [0, 2, 1] });
  });
}
