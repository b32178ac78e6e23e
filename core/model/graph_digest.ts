/**
 * The digest of what the graph builder emits, folded into the graph cache key
 * so a cached graph is rebuilt whenever the builder changes — no version to bump
 * by hand.
 *
 * The builder runs on a probe: the checkpoint's configuration (architecture,
 * biases, norms, RoPE, tying) shrunk to 2 layers of 4-wide heads with a
 * 16-token vocabulary and deterministic weights, with the same graph options
 * (and probe retaining heads when the options name a file). The digest covers
 * both files the builder writes, so any change to nodes, attributes, inputs,
 * outputs, initializer names, shapes, layouts or how weights are transformed
 * (e.g. transposed) changes it. With `fileBlocks` (GGUF Q8_0/Q4_0 blocks taken
 * unchanged) the probe's matrices are 32 columns wide or more and reach the
 * builder through the GGUF block path (`gguf/blocks.ts`), so that path is in
 * the digest too. It is computed once per process and
 * configuration: 10–80 ms for the tiny test model, 120–170 ms for the 360M
 * shape, measured on 2 shared cores under load (tests/cache_test.ts logs it).
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { normals, seedFor, uniform } from "../../kernels/random.ts";
import { type Checkpoint, expectedTensors } from "./checkpoint.ts";
import type { ModelConfig } from "./config.ts";
import { buildGraph } from "./graph_build.ts";
import { createBuildDir } from "./lock.ts";
import { makeRetainingHeads } from "./make.ts";
import { probeReadBlocks } from "./gguf/blocks.ts";
import type { GraphOptions } from "./onnx/decoder.ts";
import { readHeader, type TensorToWrite, writeSafetensors } from "./safetensors.ts";

/**
 * The configuration the builder is probed with: `c`'s features at toy sizes; with `wholeBlocks`, every
 * matrix's input width a multiple of 32, so GGUF blocks of 32 (`fileBlocks`) take the probe's matrices.
 */
export function probeConfig(c: ModelConfig, wholeBlocks = false): ModelConfig {
  const group = Math.max(1, Math.round(c.heads / c.kvHeads));
  const kvHeads = Math.min(c.kvHeads, 2);
  const heads = kvHeads * group;
  const headDim = wholeBlocks ? 32 : 4;
  const hidden = c.hidden === c.heads * c.headDim ? heads * headDim : heads * headDim + headDim;
  const intermediate = wholeBlocks ? 32 : 12;
  return { ...c, layers: 2, heads, kvHeads, headDim, hidden, intermediate, vocab: 16 };
}

/** True when the options take GGUF blocks unchanged: the probe then reads its matrices as GGUF blocks. */
const takesFileBlocks = (opts: GraphOptions) => !!opts.fileBlocks && (opts.weights === "q8" || opts.weights === "q4");

const memo = new Map<string, Promise<string>>();

/**
 * The builder's digest for a checkpoint's configuration and graph options
 * (memoized per process). `scratch` is an existing directory where the probe
 * builds (in a locked `.building-*` directory, removed afterwards).
 */
export function builderDigest(ckpt: Checkpoint, opts: GraphOptions, scratch: string): Promise<string> {
  const config = probeConfig(ckpt.config, takesFileBlocks(opts));
  const probeOpts = { ...opts, retainingHeads: opts.retainingHeads ? "probe" : undefined };
  const id = JSON.stringify({ config, tied: ckpt.tiedEmbeddings, probeOpts });
  let digest = memo.get(id);
  if (!digest) {
    digest = computeBuilderDigest(config, ckpt.tiedEmbeddings, opts, scratch);
    memo.set(id, digest);
    digest.catch(() => memo.delete(id));
  }
  return digest;
}

/** Runs the builder on the probe configuration `config` in `scratch` and digests its output (no memo). */
export async function computeBuilderDigest(
  config: ModelConfig,
  tied: boolean,
  opts: GraphOptions,
  scratch: string,
): Promise<string> {
  const dir = await createBuildDir(scratch);
  try {
    const weights = join(dir.path, "probe.safetensors");
    const tensors: TensorToWrite[] = [];
    for (const [name, shape] of expectedTensors(config, tied)) {
      const n = shape.reduce((a, b) => a * b, 1);
      tensors.push({ name, shape, data: () => normals(uniform(seedFor(1, name)), n, 0.5, 0.25) });
    }
    await writeSafetensors(weights, tensors, "F32");
    const probe: Checkpoint = {
      dir: dir.path,
      config,
      tensors: await readHeader(weights),
      files: [],
      tiedEmbeddings: tied,
    };
    if (takesFileBlocks(opts)) probe.readBlocks = probeReadBlocks(probe);
    const probeOpts = { ...opts };
    if (opts.retainingHeads) {
      probeOpts.retainingHeads = join(dir.path, "retaining.safetensors");
      await makeRetainingHeads(probeOpts.retainingHeads, config, { hidden: 3, seed: 1 });
    }
    const out = join(dir.path, "graph");
    await Deno.mkdir(out);
    await buildGraph(probe, probeOpts, out, "probe");
    const h = createHash("sha256");
    for (const name of ["model.onnx", "model.onnx.data"]) {
      const bytes = await Deno.readFile(join(out, name));
      h.update(`${name} ${bytes.length}\n`);
      h.update(bytes);
    }
    return h.digest("hex");
  } finally {
    await dir.discard();
  }
}
