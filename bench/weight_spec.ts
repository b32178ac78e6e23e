/** Weight specs for the benches: `TYPE[:BLOCK[:sym|asym[:ACCURACY_LEVEL]]]`, e.g. `q4`, `q4:64:asym:0`. */
import { DEFAULT_QUANT, type GraphOptions, type QuantOptions, type WeightType } from "../core/model/onnx/decoder.ts";

/** Parses a weight spec into graph options (quantization defaults from DEFAULT_QUANT). */
export function parseWeightSpec(spec: string): Partial<GraphOptions> {
  const [type, block, sym, level] = spec.split(":");
  if (!["f32", "f16", "bf16", "q8", "q4"].includes(type)) throw new Error(`unknown weight type ${type}`);
  const quant: QuantOptions = {
    block: block ? Number(block) : DEFAULT_QUANT.block,
    symmetric: sym ? sym === "sym" : DEFAULT_QUANT.symmetric,
    accuracyLevel: level ? (Number(level) as 0 | 4) : DEFAULT_QUANT.accuracyLevel,
  };
  return { weights: type as WeightType, ...(type.startsWith("q") ? { quant } : {}) };
}
