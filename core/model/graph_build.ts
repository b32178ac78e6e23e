/** Writing a checkpoint's decoder graph to files. */
import { join } from "node:path";
import type { Checkpoint } from "./checkpoint.ts";
import { buildDecoder, type GraphOptions, OPSETS } from "./onnx/decoder.ts";
import { Graph } from "./onnx/graph.ts";

/** Builds the decoder graph of a checkpoint into `dir` (model.onnx + model.onnx.data). */
export async function buildGraph(
  ckpt: Checkpoint,
  opts: GraphOptions,
  dir: string,
  docString = `tome decoder for ${ckpt.dir}`,
): Promise<void> {
  const data = await Deno.open(join(dir, "model.onnx.data"), { write: true, create: true, truncate: true });
  try {
    const g = new Graph({ file: data, location: "model.onnx.data", threshold: 1024 });
    await buildDecoder(g, ckpt, opts);
    await Deno.writeFile(join(dir, "model.onnx"), g.encode(OPSETS, docString));
  } finally {
    data.close();
  }
}
