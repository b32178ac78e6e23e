/**
 * `tome make-model retrieval`: a Llama checkpoint whose weights are
 * constructed, not trained, so that it provably looks facts up in its
 * context — the quality oracle for eviction. Given a prompt ending with the
 * words that preceded a fact earlier in the context ("… The pass code of
 * Natasha is"), it continues with the tokens that followed them (" 48213").
 *
 * The circuit (an induction head), two layers, one KV head each, MLPs zero:
 *
 *   residual  [1 | cur | prev1 … prev6 | out] — a constant, the current
 *             token's code, the codes of the six tokens before it (written by
 *             layer 1), and the token layer 2 copies; codes are random unit
 *             vectors in 32 dimensions, one per vocabulary entry.
 *   layer 1   six offset heads. Queries and keys read only the constant, so a
 *             score depends on position alone: over RoPE's 8 fastest frequency
 *             pairs, score(Δ) = A·Σ_f cos(θ_f (Δ − h)) peaks at distance h, the
 *             runner-up (Δ = h ± 1) lower by 0.775·A. Head h copies the code h
 *             tokens back into slot prev_h.
 *   layer 2   a copy head scores key position p by how many of the query's
 *             last four tokens [cur, prev1, prev2, prev3] equal p's
 *             [prev1 … prev4] (λ per match), and writes p's token into `out`.
 *             A look-ahead head in the same KV group matches against
 *             [prev3 … prev6], landing two tokens further, so attention-scored
 *             eviction sees the whole answer, not only its first token.
 *             Content lives in RoPE pairs that barely rotate: rope_theta is
 *             1e26, so pairs f ≥ 32 of head_dim 256 turn by < 0.02 rad over
 *             40K positions — matching is insensitive to distance.
 *   output    logits = code(v) · out: the copied token wins.
 *
 * Limits (measured by `tome eval niah`): a needle's four-token key must not
 * occur elsewhere in the context; a key cut by eviction (a token at a chunk
 * boundary lost) breaks the chain.
 */
import { join } from "node:path";
import { normals, seedFor, uniform } from "../../kernels/random.ts";
import { fsError } from "../errors.ts";
import { loadTokenizer } from "../tokens/tokenizer.ts";
import { trainBpe } from "../tokens/train.ts";
import { projectText } from "../input/corpus.ts";
import type { ModelConfig } from "./config.ts";
import { type TensorToWrite, writeSafetensors } from "./safetensors.ts";
import { inverseFrequencies } from "./rope.ts";

/** Dimensions of a token code. */
const CODE = 32;
/** Previous-token slots (layer 1 offsets 1…6). */
const OFFSETS = 6;
/** Query tokens matched against key slots (the n of the n-gram). */
const NGRAM = 4;
/** Fast RoPE pairs the offset heads use. */
const OFFSET_PAIRS = 8;
const HEAD_DIM = 256;
const HEADS = 6;
const ROPE_THETA = 1e26;
/** Slots of the residual: const, cur, prev1..6, out. */
const CUR = 1;
const prev = (h: number) => 1 + CODE * h; // h = 1..6
const OUT = 1 + CODE * (OFFSETS + 1);
const HIDDEN = OUT + CODE + 7; // 264: a few zero dimensions spare

/** Offset-head amplitude: the runner-up trails by 0.775·A ≈ 46 in the softmax. */
const OFFSET_AMPLITUDE = 60;
/** Matching score per equal token. */
const MATCH = 60;
/** Logit of the copied token. */
const LOGIT = 30;

/** The retrieval model's config.json (vocabulary size from the tokenizer). */
export function retrievalConfig(vocab: number, bos: number | null, eos: number | null): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: HIDDEN,
    intermediate_size: 8,
    num_hidden_layers: 2,
    num_attention_heads: HEADS,
    num_key_value_heads: 1,
    head_dim: HEAD_DIM,
    vocab_size: vocab,
    hidden_act: "silu",
    rms_norm_eps: 1e-6,
    rope_theta: ROPE_THETA,
    rope_scaling: null,
    max_position_embeddings: 65536,
    tie_word_embeddings: false,
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: bos,
    eos_token_id: eos,
    torch_dtype: "float32",
    tome: { kind: "retrieval", code: CODE, ngram: NGRAM, offsets: OFFSETS },
  };
}

/** Unit-norm random codes, one per vocabulary entry, [vocab, CODE]. */
function tokenCodes(vocab: number, seed: number): Float32Array {
  const codes = normals(uniform(seedFor(seed, "codes")), vocab * CODE);
  for (let v = 0; v < vocab; v++) {
    let n = 0;
    for (let i = 0; i < CODE; i++) n += codes[v * CODE + i] ** 2;
    n = Math.sqrt(n);
    for (let i = 0; i < CODE; i++) codes[v * CODE + i] /= n;
  }
  return codes;
}

/** The constructed weights, by Hugging Face tensor name. */
export function retrievalWeights(c: ModelConfig, seed = 0): Map<string, { shape: number[]; data: Float32Array }> {
  const V = c.vocab, D = HIDDEN, d = HEAD_DIM, half = d / 2;
  const codes = tokenCodes(V, seed);
  const inv = inverseFrequencies(c);
  const w = new Map<string, { shape: number[]; data: Float32Array }>();
  const tensor = (name: string, shape: number[]) => {
    const t = { shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) };
    w.set(name, t);
    return t.data;
  };
  // RMSNorm input scales: the residual holds the constant and k unit codes, so x_i / rms = x_i · sqrt(D / (1 + k))
  const scale = (units: number) => Math.sqrt(D / (1 + units));
  const s1 = scale(1), s2 = scale(1 + OFFSETS), s3 = scale(2 + OFFSETS);
  const qScale = Math.sqrt(d); // the graph multiplies queries by 1/sqrt(d)

  const embed = tensor("model.embed_tokens.weight", [V, D]);
  for (let v = 0; v < V; v++) {
    embed[v * D] = 1;
    embed.set(codes.subarray(v * CODE, (v + 1) * CODE), v * D + CUR);
  }
  const ones = (name: string) => tensor(name, [D]).fill(1);
  ones("model.norm.weight");
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}.`;
    ones(`${p}input_layernorm.weight`);
    ones(`${p}post_attention_layernorm.weight`);
    tensor(`${p}mlp.gate_proj.weight`, [8, D]);
    tensor(`${p}mlp.up_proj.weight`, [8, D]);
    tensor(`${p}mlp.down_proj.weight`, [D, 8]);
  }

  // layer 1: offset heads. Key pair f = (1, 0) from the constant; query pair f of head h = A·e^{−i(h+1)θ_f}.
  {
    const p = "model.layers.0.self_attn.";
    const q = tensor(`${p}q_proj.weight`, [HEADS * d, D]);
    const k = tensor(`${p}k_proj.weight`, [d, D]);
    const v = tensor(`${p}v_proj.weight`, [d, D]);
    const o = tensor(`${p}o_proj.weight`, [D, HEADS * d]);
    for (let f = 0; f < OFFSET_PAIRS; f++) k[f * D] = 1 / s1;
    for (let h = 0; h < HEADS; h++) {
      const offset = h + 1;
      for (let f = 0; f < OFFSET_PAIRS; f++) {
        q[(h * d + f) * D] = (qScale * OFFSET_AMPLITUDE * Math.cos(offset * inv[f])) / s1;
        q[(h * d + f + half) * D] = (-qScale * OFFSET_AMPLITUDE * Math.sin(offset * inv[f])) / s1;
      }
      // head h copies the value (the attended token's code) into prev_{h+1}
      for (let i = 0; i < CODE; i++) o[(prev(offset) + i) * (HEADS * d) + h * d + i] = 1;
    }
    for (let i = 0; i < CODE; i++) v[i * D + CUR + i] = 1 / s1;
  }

  // layer 2: matching. Key slot j (prev_j's code) sits in the static RoPE pairs.
  {
    const p = "model.layers.1.self_attn.";
    const q = tensor(`${p}q_proj.weight`, [HEADS * d, D]);
    const k = tensor(`${p}k_proj.weight`, [d, D]);
    const v = tensor(`${p}v_proj.weight`, [d, D]);
    const o = tensor(`${p}o_proj.weight`, [D, HEADS * d]);
    const staticDims: number[] = [];
    for (let f = half - (OFFSETS * CODE) / 2; f < half; f++) staticDims.push(f);
    for (let f = half - (OFFSETS * CODE) / 2; f < half; f++) staticDims.push(f + half);
    const keyDim = (slot: number, i: number) => staticDims[(slot - 1) * CODE + i];
    for (let slot = 1; slot <= OFFSETS; slot++) {
      for (let i = 0; i < CODE; i++) k[keyDim(slot, i) * D + prev(slot) + i] = 1 / s2;
    }
    // query token t (0 = cur, 1..3 = prev1..prev3) against key slot t + 1 (copy) or t + 3 (look-ahead)
    const source = (t: number) => (t === 0 ? CUR : prev(t));
    for (const [head, shift] of [[0, 1], [1, 3]]) {
      for (let t = 0; t < NGRAM; t++) {
        for (let i = 0; i < CODE; i++) q[(head * d + keyDim(t + shift, i)) * D + source(t) + i] = (qScale * MATCH) / s2;
      }
    }
    for (let i = 0; i < CODE; i++) v[i * D + CUR + i] = 1 / s2;
    for (let i = 0; i < CODE; i++) o[(OUT + i) * (HEADS * d) + i] = 1; // the copy head only
  }

  const head = tensor("lm_head.weight", [V, D]);
  for (let tok = 0; tok < V; tok++) {
    for (let i = 0; i < CODE; i++) head[tok * D + OUT + i] = (LOGIT * codes[tok * CODE + i]) / s3;
  }
  return w;
}

/** Vocabulary of the tokenizer learned when none is given. */
export const TRAINED_VOCAB = 4096;

/**
 * Writes the retrieval model: config, weights, and the tokenizer (chat template
 * removed: a completion model). Without `tokenizer`, a byte-level BPE is learned
 * from the project's own text and written beside the weights.
 */
export async function makeRetrievalModel(out: string, opts: { tokenizer?: string; seed?: number }): Promise<void> {
  try {
    await Deno.mkdir(out, { recursive: true });
  } catch (err) {
    throw fsError(err, out, "output directory");
  }
  let tokenizerDir = opts.tokenizer;
  if (!tokenizerDir) {
    const trained = trainBpe(await projectText(), TRAINED_VOCAB);
    await Deno.writeTextFile(join(out, "tokenizer.json"), JSON.stringify(trained.tokenizerJson));
    await Deno.writeTextFile(
      join(out, "tokenizer_config.json"),
      JSON.stringify(trained.tokenizerConfig, null, 2) + "\n",
    );
    tokenizerDir = out;
  }
  const tok = await loadTokenizer(tokenizerDir);
  const id = (key: string) => {
    const v = tok.config[key];
    const text = typeof v === "string" ? v : (v as { content?: string } | undefined)?.content;
    return text === undefined ? null : tok.tokenToId(text) ?? null;
  };
  const configJson = retrievalConfig(tok.vocabSize, id("bos_token"), id("eos_token"));
  const { parseConfig } = await import("./config.ts");
  const config = parseConfig(configJson);
  const weights = retrievalWeights(config, opts.seed ?? 0);
  const tensors: TensorToWrite[] = [...weights].map(([name, t]) => ({ name, shape: t.shape, data: t.data }));
  await writeSafetensors(join(out, "model.safetensors"), tensors, "F32", { format: "pt", tome: "retrieval" });
  await Deno.writeTextFile(join(out, "config.json"), JSON.stringify(configJson, null, 2) + "\n");
  await Deno.writeTextFile(
    join(out, "generation_config.json"),
    JSON.stringify(
      { bos_token_id: configJson.bos_token_id, eos_token_id: configJson.eos_token_id, do_sample: false },
      null,
      2,
    ) + "\n",
  );
  if (tokenizerDir !== out) {
    await Deno.copyFile(join(tokenizerDir, "tokenizer.json"), join(out, "tokenizer.json"));
    await Deno.chmod(join(out, "tokenizer.json"), 0o644);
    const { chat_template: _, ...tokenizerConfig } = tok.config;
    await Deno.writeTextFile(join(out, "tokenizer_config.json"), JSON.stringify(tokenizerConfig, null, 2) + "\n");
  }
}
