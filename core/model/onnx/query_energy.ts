/**
 * ThinK's query factor (arXiv 2407.21018) in the decoder graph
 * (`GraphOptions.queryEnergy`, for thin keys, `--key-channels` < 1):
 *   query_energy_L   f32 [1, Hkv, d]   Σ q[s, i]² per channel i over the observation-window queries
 *                                      (s ≥ window_start, the rows the `window` statistic reads) and over
 *                                      the query heads of each KV head's group
 * The queries are in the frame of the keys the cache stores: rotated in
 * `original` mode, unrotated in `compact` mode (where the cache holds
 * unrotated keys and the graph rotates them to their slots), so channel i of
 * a query meets channel i of a cached key. ThinK scores key channel i of a
 * head by ‖Q_win[:, i]·K[:, i]ᵀ‖_F, an outer product's norm, which factors as
 * ‖Q_win[:, i]‖·‖K[:, i]‖: this output is the square of the first factor.
 * Only graphs with the option have it; it is computed on every run (a slice,
 * a square and a sum over the window's rows: small beside attention).
 */
import type { AttentionShapes } from "./attention.ts";
import type { Graph } from "./graph.ts";

/** Output name of layer l's query energy. */
export const queryEnergyIo = (l: number) => `query_energy_${l}`;

/** Adds layer l's query energy from q [1,H,S,d] (in the cached keys' frame); returns the output's name. */
export function queryEnergy(g: Graph, sh: AttentionShapes, l: number, q: string): string {
  return g.within("query_energy", () => {
    const sEnd = g.op("Unsqueeze", [sh.S, g.ints([0])]);
    const window = g.op("Slice", [q, sh.windowStart, sEnd, g.ints([2])]); // [1,H,w,d]
    const grouped = g.op("Reshape", [g.op("Mul", [window, window]), sh.grouped]); // [1,K,g·w,d]
    return g.op("ReduceSum", [grouped, g.ints([2])], { keepdims: 0 }, { out: queryEnergyIo(l) }); // [1,K,d]
  });
}

/** Declares every layer's query energy output. */
export function queryEnergyDecls(g: Graph, layers: number, K: number, d: number): void {
  for (let l = 0; l < layers; l++) g.output(queryEnergyIo(l), "float32", [1, K, d]);
}
