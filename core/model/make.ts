/**
 * `tome make-model tiny`: real Hugging Face checkpoint directories with small
 * deterministic random weights, for tests and benchmarks. They go through the
 * same loader as a user's checkpoint.
 */
import { basename, dirname, isAbsolute, join, relative, resolve, sep as SEP } from "node:path";
import { normals, seedFor, uniform } from "../../kernels/random.ts";
import { fsError, TomeError } from "../errors.ts";
import { loadTokenizer } from "../tokens/tokenizer.ts";
import { type Arch, type ModelConfig, parseConfig } from "./config.ts";
import { retainingNames } from "./onnx/retaining.ts";
import { expectedTensors } from "./checkpoint.ts";
import { type TensorToWrite, writeSafetensors } from "./safetensors.ts";

/** Shapes a random model can take. */
export interface ModelShape {
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
}

/** Named sizes: `tiny` for tests, `360m` the shape of SmolLM2-360M for benchmarks. */
export const SIZES: Record<string, ModelShape> = {
  tiny: { hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 128 },
  small: { hidden: 256, layers: 4, heads: 8, kvHeads: 2, intermediate: 512 },
  "360m": { hidden: 960, layers: 32, heads: 15, kvHeads: 5, intermediate: 2560 },
};

export interface RandomModelSpec {
  arch: Arch;
  shape: ModelShape;
  seed: number;
  dtype: "F32" | "BF16";
  /** Directory whose tokenizer files are copied; the vocabulary size is taken from it. */
  tokenizer: string;
  /** Llama only: use Llama-3.x `rope_scaling` (type llama3). */
  llama3Rope?: boolean;
  /** Override tying (defaults: tied for llama, qwen2, qwen3; untied for mistral, to cover both). */
  tie?: boolean;
}

const ARCHITECTURES: Record<Arch, string> = {
  llama: "LlamaForCausalLM",
  mistral: "MistralForCausalLM",
  qwen2: "Qwen2ForCausalLM",
  qwen3: "Qwen3ForCausalLM",
};

const TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "LICENSE"];

/** Writes config.json, model.safetensors, generation_config.json and the tokenizer files to `out`. */
export async function makeRandomModel(out: string, spec: RandomModelSpec): Promise<void> {
  const tok = await loadTokenizer(spec.tokenizer);
  const { hidden, layers, heads, kvHeads, intermediate } = spec.shape;
  if (hidden % heads !== 0 || heads % kvHeads !== 0 || (hidden / heads) % 2 !== 0) {
    throw new TomeError(
      "usage",
      `shape: hidden ${hidden} must split into ${heads} even-sized heads, divisible by ${kvHeads} KV heads`,
    );
  }
  const tokenId = (key: string) => {
    const v = tok.config[key];
    const text = typeof v === "string" ? v : (v as { content?: string } | undefined)?.content;
    return text === undefined ? undefined : tok.tokenToId(text);
  };
  const bos = tokenId("bos_token") ?? null;
  const eos = tokenId("eos_token") ?? null;
  const tie = spec.tie ?? spec.arch !== "mistral";
  const config: Record<string, unknown> = {
    architectures: [ARCHITECTURES[spec.arch]],
    model_type: spec.arch,
    hidden_size: hidden,
    intermediate_size: intermediate,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: hidden / heads,
    vocab_size: tok.vocabSize,
    hidden_act: "silu",
    rms_norm_eps: 1e-6,
    rope_theta: spec.arch === "llama" ? 500000 : 10000,
    rope_scaling: spec.llama3Rope
      ? {
        rope_type: "llama3",
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 64,
      }
      : null,
    max_position_embeddings: 8192,
    tie_word_embeddings: tie,
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: bos,
    eos_token_id: eos,
    torch_dtype: spec.dtype === "BF16" ? "bfloat16" : "float32",
    tome: { kind: "tiny", seed: spec.seed },
  };
  if (spec.arch === "mistral") config.sliding_window = null;
  let parsed: ModelConfig;
  try {
    parsed = parseConfig(config);
  } catch (err) {
    throw err instanceof TomeError ? new TomeError("usage", err.message.replace(/^config\.json: /, "shape: ")) : err;
  }

  try {
    await Deno.mkdir(out, { recursive: true });
  } catch (err) {
    throw fsError(err, out, "output directory");
  }
  const tensors: TensorToWrite[] = [];
  for (const [name, shape] of expectedTensors(parsed, tie)) {
    tensors.push({ name, shape, data: () => randomTensor(name, shape, spec.seed) });
  }
  await writeSafetensors(join(out, "model.safetensors"), tensors, spec.dtype, { format: "pt" });
  await Deno.writeTextFile(join(out, "config.json"), JSON.stringify(config, null, 2) + "\n");
  await Deno.writeTextFile(
    join(out, "generation_config.json"),
    JSON.stringify({ bos_token_id: bos, eos_token_id: eos, do_sample: false }, null, 2) + "\n",
  );
  for (const f of TOKENIZER_FILES) {
    try {
      await Deno.copyFile(join(spec.tokenizer, f), join(out, f));
      await Deno.chmod(join(out, f), 0o644); // the source may be read-only (../shared is)
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw fsError(err, join(spec.tokenizer, f), "tokenizer file");
    }
  }
}

/**
 * Deterministic random Locret retaining heads for a model (tests; trained heads
 * come from the Locret authors' training script): see `onnx/retaining.ts` for the format.
 */
export async function makeRetainingHeads(
  path: string,
  c: ModelConfig,
  opts: { hidden?: number; seed?: number } = {},
): Promise<void> {
  const hidden = opts.hidden ?? 32;
  const F = c.heads * c.headDim + 2 * c.kvHeads * c.headDim;
  const tensors: TensorToWrite[] = [];
  for (let l = 0; l < c.layers; l++) {
    const n = retainingNames(l);
    const r = (name: string, shape: number[], std: number) => ({
      name,
      shape,
      data: () => normals(uniform(seedFor(opts.seed ?? 0, name)), shape.reduce((a, b) => a * b, 1), std),
    });
    tensors.push(
      r(n.w1, [hidden, F], 1 / Math.sqrt(F)),
      r(n.b1, [hidden], 0.1),
      r(n.w2, [c.kvHeads, hidden], 1 / Math.sqrt(hidden)),
      r(n.b2, [c.kvHeads], 0.1),
    );
  }
  await writeSafetensors(path, tensors, "F32", { format: "tome-retaining-heads" });
}

/**
 * Deterministic weights with useful scales: linear weights N(0, 1/fan_in) so
 * activations keep unit size, norms 1 ± 0.1, biases N(0, 0.1²), embeddings N(0, 0.5²).
 */
function randomTensor(name: string, shape: number[], seed: number): Float32Array {
  const next = uniform(seedFor(seed, name));
  const n = shape.reduce((a, b) => a * b, 1);
  if (name.endsWith("norm.weight")) return normals(next, n, 0.1, 1);
  if (name.endsWith(".bias")) return normals(next, n, 0.1);
  if (name === "model.embed_tokens.weight" || name === "lm_head.weight") return normals(next, n, 0.5);
  return normals(next, n, 1 / Math.sqrt(shape[1]));
}

/** The file `tome make-model` writes into every checkpoint it makes: the names of the files it wrote. */
export const MODEL_MARKER = ".tome-model";

/** Writes {@link MODEL_MARKER} into `dir`, listing every file there (call when the checkpoint is complete). */
export async function markModel(dir: string, kind: string): Promise<void> {
  const files: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.isFile) files.push(e.name);
  const marker = { written_by: "tome make-model", kind, files: files.sort() };
  await Deno.writeTextFile(join(dir, MODEL_MARKER), JSON.stringify(marker, null, 2) + "\n");
}

/**
 * Checks that `out` may be written by make-model: absent, an empty directory,
 * or (with `force`) a directory that tome make-model wrote — it holds
 * {@link MODEL_MARKER} and nothing but the files the marker lists — and that is
 * neither the current directory nor one of its parents. Anything else is a
 * usage error, and nothing is touched. Returns whether `out` exists.
 */
export async function checkReplaceable(out: string, force: boolean): Promise<boolean> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.lstat(out);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw cannotWrite(out, err);
  }
  if (st.isSymlink) throw new TomeError("usage", `--out is a symbolic link, which tome will not replace: ${out}`);
  if (!st.isDirectory) throw new TomeError("usage", `--out exists and is not a directory: ${out}`);
  const entries: Deno.DirEntry[] = [];
  try {
    for await (const e of Deno.readDir(out)) entries.push(e);
  } catch (err) {
    throw cannotWrite(out, err);
  }
  const abs = await Deno.realPath(out).catch(() => resolve(out));
  const fromCwd = relative(abs, Deno.cwd());
  const outside = fromCwd === ".." || fromCwd.startsWith(`..${SEP}`) || isAbsolute(fromCwd);
  if (!outside || dirname(abs) === abs) {
    throw new TomeError(
      "usage",
      `--out is the current directory or one of its parents, which tome will not replace: ${out}`,
    );
  }
  if (entries.length === 0) return true;
  if (!force) throw new TomeError("usage", `--out is not empty: ${out} (use --force to replace it)`);
  let listed: unknown;
  try {
    listed = JSON.parse(await Deno.readTextFile(join(out, MODEL_MARKER)))?.files;
  } catch {
    listed = null;
  }
  if (!Array.isArray(listed)) {
    throw new TomeError(
      "usage",
      `--force replaces only a directory written by tome make-model, and ${out} has no ${MODEL_MARKER}: ` +
        `remove it yourself if it should go`,
    );
  }
  const ours = new Set<unknown>([...listed, MODEL_MARKER]);
  for (const e of entries) {
    if (!e.isFile || !ours.has(e.name)) {
      throw new TomeError(
        "usage",
        `--force will not replace ${out}: it holds ${basename(e.name)}, which tome make-model did not write`,
      );
    }
  }
  return true;
}

function cannotWrite(out: string, err: unknown): TomeError {
  const msg = err instanceof Error ? err.message.split("\n")[0] : String(err);
  return new TomeError("output", `cannot write --out ${out}: ${msg}`);
}
