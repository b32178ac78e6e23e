/** A model ready to read with: checkpoint, tokenizer, generation defaults and a session on its graph. */
import type { LowTier } from "../model/onnx/low_tier.ts";
import { join } from "node:path";
import { fsError, TomeError } from "../errors.ts";
import { graphFor } from "../model/cache.ts";
import { type Checkpoint, checkTokenizerFits, openCheckpoint } from "../model/checkpoint.ts";
import type { ModelConfig } from "../model/config.ts";
import {
  DEFAULT_GRAPH_OPTIONS,
  DEFAULT_QUANT,
  type GraphOptions,
  graphOptionsFor,
  type QuantOptions,
  resolveWeights,
  type WeightChoice,
} from "../model/onnx/decoder.ts";
import { ModelSession, type SessionOptions } from "../model/session.ts";
import { loadTokenizer, type Tokenizer } from "../tokens/tokenizer.ts";
import type { KvDtype } from "./kv_store.ts";

/** `generation_config.json`, the parts tome uses. */
export interface GenerationDefaults {
  eos: number[];
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
  maxNewTokens: number | null;
}

export interface LoadedModel {
  dir: string;
  checkpoint: Checkpoint;
  config: ModelConfig;
  tokenizer: Tokenizer;
  generation: GenerationDefaults;
  session: ModelSession;
  graph: GraphOptions;
  /** True when the graph was built by this load (not found in the cache). */
  built: boolean;
  buildSeconds: number;
  loadSeconds: number;
}

export interface LoadOptions {
  positions?: "original" | "compact";
  kvDtype?: KvDtype;
  threads?: number;
  /** Logits for every position (perplexity evaluation) instead of the last. */
  allLogits?: boolean;
  /** Locret retaining heads (safetensors) to build into the graph, for the locret policy. */
  retainingHeads?: string;
  /** MiKV's low tier (`--keep-evicted`): a graph that takes it (`GraphOptions.lowTier`). */
  lowTier?: LowTier;
  /** Thin keys (`--key-channels` < 1): a graph that returns ThinK's query factor (`GraphOptions.queryEnergy`). */
  queryEnergy?: boolean;
  /** onnxruntime execution providers (default: cpu). */
  executionProviders?: string[];
  /** How the graph stores weights (default f32; `auto` is the checkpoint's own precision). */
  weights?: WeightChoice;
  /** Block quantization for q8/q4 (default DEFAULT_QUANT). */
  quant?: QuantOptions;
  /** q8/q4 from a GGUF file: take its Q8_0/Q4_0 blocks unchanged (default true; `GraphOptions.fileBlocks`). */
  fileBlocks?: boolean;
  /** Further onnxruntime session options (benches measure them one by one). */
  ort?: SessionOptions["ort"];
  /** Called after each stage (checkpoint, graph, session): benches read resident memory there. */
  onStage?: (stage: "checkpoint" | "graph" | "session") => void;
}

/** Opens a checkpoint directory, builds (or finds) its graph and starts a session. */
export async function loadModel(dir: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  const checkpoint = await openCheckpoint(dir);
  const tokenizer = await loadTokenizer(dir);
  checkTokenizerFits(checkpoint, tokenizer.vocabSize);
  const weights = resolveWeights(checkpoint, opts.weights ?? "f32");
  const graph: GraphOptions = graphOptionsFor({
    ...DEFAULT_GRAPH_OPTIONS,
    positions: opts.positions ?? "original",
    kvDtype: opts.kvDtype ?? "float32",
    logits: opts.allLogits ? "all" : "last",
    weights,
    ...(weights === "q8" || weights === "q4" ? { quant: opts.quant ?? DEFAULT_QUANT } : {}),
    ...((weights === "q8" || weights === "q4") && checkpoint.readBlocks && opts.fileBlocks !== false
      ? { fileBlocks: true }
      : {}),
    ...(opts.retainingHeads ? { retainingHeads: opts.retainingHeads } : {}),
    ...(opts.lowTier ? { lowTier: opts.lowTier } : {}),
    ...(opts.queryEnergy ? { queryEnergy: true as const } : {}),
  }, opts.executionProviders);
  // the generation config is checked before the (possibly long) graph build
  const generation = await generationDefaults(dir, checkpoint.config, tokenizer);
  opts.onStage?.("checkpoint");
  const cached = await graphFor(checkpoint, graph);
  opts.onStage?.("graph");
  const t0 = performance.now();
  const session = await ModelSession.open(checkpoint.config, graph, cached.path, {
    threads: opts.threads,
    executionProviders: opts.executionProviders,
    ort: opts.ort,
  });
  opts.onStage?.("session");
  return {
    dir,
    checkpoint,
    config: checkpoint.config,
    tokenizer,
    generation,
    session,
    graph,
    built: cached.built,
    buildSeconds: cached.seconds,
    loadSeconds: (performance.now() - t0) / 1000,
  };
}

/** EOS ids and sampling defaults from generation_config.json, config.json and the tokenizer. */
export async function generationDefaults(
  dir: string,
  config: ModelConfig,
  tokenizer: Tokenizer,
): Promise<GenerationDefaults> {
  const g = await readGenerationConfig(join(dir, "generation_config.json"));
  const ids = (v: unknown) =>
    (Array.isArray(v) ? v : typeof v === "number" ? [v] : []).filter((x) => typeof x === "number");
  const eos = new Set<number>([...ids(g.eos_token_id), ...config.eosTokenIds]);
  const eosText = tokenizer.config.eos_token;
  const text = typeof eosText === "string" ? eosText : (eosText as { content?: string } | undefined)?.content;
  const fromTokenizer = text ? tokenizer.tokenToId(text) : undefined;
  if (fromTokenizer !== undefined) eos.add(fromTokenizer);
  const num = (v: unknown, d: number) => (typeof v === "number" ? v : d);
  const sampled = g.do_sample === true;
  return {
    eos: [...eos],
    temperature: sampled ? num(g.temperature, 1) : 0,
    topK: sampled ? num(g.top_k, 0) : 0,
    topP: sampled ? num(g.top_p, 1) : 1,
    repetitionPenalty: num(g.repetition_penalty, 1),
    maxNewTokens: typeof g.max_new_tokens === "number" ? g.max_new_tokens : null,
  };
}

/** `generation_config.json` as an object: `{}` when the file is missing, a model error when it is not a JSON object. */
async function readGenerationConfig(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) return {};
    throw fsError(err, path, "generation config");
  }
  let g: unknown;
  try {
    g = JSON.parse(text);
  } catch (err) {
    throw new TomeError("modelInvalid", `${path} is not valid JSON: ${(err as Error).message}`);
  }
  if (!g || typeof g !== "object" || Array.isArray(g)) {
    throw new TomeError("modelInvalid", `${path} is not a JSON object`);
  }
  return g as Record<string, unknown>;
}
