import type { Command } from "commander";
import { findGraph } from "../../core/model/cache.ts";
import { expectedTensors, openCheckpoint } from "../../core/model/checkpoint.ts";
import { kvBytesPerToken } from "../../core/model/config.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from "../../core/model/onnx/decoder.ts";
import { ggufHeaderFor, isGgufModel } from "../../core/model/gguf/checkpoint.ts";
import { describeGguf, type GgufDescription } from "../../core/model/gguf/describe.ts";
import { formatBytes } from "../progress.ts";
import { readStateHeader } from "../../core/state/file.ts";
import { usage, writeStdout } from "../output.ts";

/** Every graph variant tome can build, for the cache report. */
function graphVariants(): GraphOptions[] {
  const out: GraphOptions[] = [];
  for (const positions of ["original", "compact"] as const) {
    for (const kvDtype of ["float32", "float16"] as const) {
      for (const weights of ["f32", "f16", "bf16", "q8", "q4"] as const) {
        for (const logits of ["last", "all"] as const) out.push({ positions, kvDtype, weights, logits });
      }
    }
  }
  return out;
}

/** `tome inspect FILE.tstate`: what a saved reading state holds. */
async function inspectState(path: string, opts: { json?: boolean }): Promise<void> {
  const h = await readStateHeader(path);
  const sum = (grid: number[][]) => grid.flat().reduce((a, b) => a + b, 0);
  const slots = Math.max(1, h.model.layers * h.model.kvHeads);
  const entries = sum(h.lengths);
  const info = {
    state: path,
    format: h.version,
    created: h.created,
    model: h.model,
    tokenizer: h.tokenizer.digest,
    run: h.run,
    recipe: h.recipe,
    questions: h.questions,
    query_agnostic: h.queryAgnostic,
    input: h.input,
    tokens_read: h.position - h.prefix.length,
    entries_per_head: entries / slots,
    kv_bytes: h.meter.kvNow,
    kv_peak_bytes: h.meter.kvPeak,
    // what a version-2 state keeps beside the whole-key K/V: MiKV's low tier, thin keys, a merger's state
    low_tier: h.low
      ? {
        tier: `int${h.low.bits}`,
        entries_per_head: sum(h.low.lengths) / slots,
        budget: h.low.budget,
        kv_bytes: h.meter.kvLowNow ?? 0,
      }
      : null,
    key_channels: h.thin ? { channels: h.thin.channels, head_dim: h.model.headDim, window: h.thin.window } : null,
    merge: h.merger?.name ?? null,
    payload: h.payload,
  };
  if (opts.json) return void await writeStdout(JSON.stringify(info) + "\n");
  const row = (k: string, v: string) => `${k.padEnd(14)}${v}\n`;
  await writeStdout(
    row("state", `${path} (format ${h.version}, ${h.created})`) +
      row("model", `${h.model.arch}, ${h.model.layers} layers × ${h.model.kvHeads} KV heads × ${h.model.headDim}`) +
      row("read", `${h.input.sources.join(", ") || "?"}: ${info.tokens_read} tokens, ${h.input.bytes} bytes`) +
      row(
        "policy",
        `${h.run.policy}, budget ${h.run.budget}, chunk ${h.run.chunk}, ${h.run.positions} positions, ${h.run.kvDtype}`,
      ) +
      row(
        "shaped by",
        h.queryAgnostic ? "no question (query-agnostic)" : h.questions.length ? h.questions.join(" | ") : "no question",
      ) +
      row(
        "KV",
        `${formatBytes(info.kv_bytes)} retained (${info.entries_per_head.toFixed(0)} entries per layer and head)`,
      ) +
      (info.low_tier
        ? row(
          "low tier",
          `${info.low_tier.tier}: ${formatBytes(info.low_tier.kv_bytes)}, ${
            info.low_tier.entries_per_head.toFixed(0)
          } of ${info.low_tier.budget} entries per layer and head`,
        )
        : "") +
      (info.key_channels
        ? row("thin keys", `${info.key_channels.channels} of ${info.key_channels.head_dim} key channels`)
        : "") +
      (info.merge ? row("merge", `${info.merge} (weights kept)`) : ""),
  );
}

/** `tome inspect MODEL`: what a checkpoint is and what it costs per token of KV. */
export function inspectCommand(program: Command): void {
  program.command("inspect")
    .description("describe a model checkpoint: architecture, size, KV bytes per token, cached graphs")
    .argument(
      "[model]",
      "checkpoint directory, FILE.gguf or ollama:NAME[:TAG] (default: $TOME_MODEL), or a saved state FILE.tstate",
    )
    .option("--json", "print one JSON object")
    .addHelpText(
      "after",
      "\nExample:\n  tome inspect /tmp/tiny-llama\n  tome inspect ~/models/SmolLM2-360M-Instruct --json\n  tome inspect smollm2-360m-q8_0.gguf\n  tome inspect ollama:smollm2:360m",
    )
    .action(async (model: string | undefined, opts: { json?: boolean }) => {
      if (model?.endsWith(".tstate")) return await inspectState(model, opts);
      const dir = model ?? Deno.env.get("TOME_MODEL");
      if (!dir) throw usage("inspect needs a model directory (or TOME_MODEL)");
      const ckpt = await openCheckpoint(dir);
      const c = ckpt.config;
      let params = 0;
      for (const shape of expectedTensors(c, ckpt.tiedEmbeddings).values()) params += shape.reduce((a, b) => a * b, 1);
      const diskBytes = ckpt.files.reduce((n, f) => n + f.size, 0);
      const gguf = isGgufModel(dir) ? describeGguf(await ggufHeaderFor(dir)) : null;
      const dtypes = gguf
        ? gguf.types.map((t) => t.type)
        : [...new Set([...ckpt.tensors.values()].map((t) => t.dtype))];
      const cached = [];
      for (const v of graphVariants()) {
        const { dir: graphDir, exists } = await findGraph(ckpt, v);
        if (exists) cached.push({ ...v, dir: graphDir });
      }
      const info = {
        model: ckpt.dir,
        arch: c.arch,
        parameters: params,
        weights: { dtypes, files: ckpt.files.length, bytes: diskBytes },
        layers: c.layers,
        heads: c.heads,
        kv_heads: c.kvHeads,
        head_dim: c.headDim,
        hidden: c.hidden,
        intermediate: c.intermediate,
        vocab: c.vocab,
        max_context: c.maxPositions,
        rope: { theta: c.ropeTheta, scaling: c.ropeScaling },
        tied_embeddings: ckpt.tiedEmbeddings,
        kv_bytes_per_token: { f32: kvBytesPerToken(c, 4), f16: kvBytesPerToken(c, 2) },
        cached_graphs: cached,
        ...(gguf ? { gguf } : {}),
      };
      if (opts.json) return await writeStdout(JSON.stringify(info) + "\n");
      const kv = (b: number) => `${formatBytes(b)}/token (${formatBytes(b * 1024)} per 1K tokens)`;
      const def = cached.some((g) => sameOptions(g, DEFAULT_GRAPH_OPTIONS));
      const lines = [
        ["model", `${ckpt.dir}`],
        ["architecture", `${c.arch}${c.qkvBias ? ", q/k/v biases" : ""}${c.qkNorm ? ", q/k norm" : ""}`],
        [
          "parameters",
          `${(params / 1e6).toFixed(1)}M (${dtypes.join("/")}, ${
            formatBytes(diskBytes)
          } in ${ckpt.files.length} file(s))`,
        ],
        ["layers", `${c.layers}`],
        ["heads", `${c.heads} query, ${c.kvHeads} key/value (group ${c.heads / c.kvHeads}), head_dim ${c.headDim}`],
        ["hidden", `${c.hidden}, MLP ${c.intermediate}, vocab ${c.vocab}`],
        [
          "max context",
          `${c.maxPositions} tokens (rope_theta ${c.ropeTheta}${
            c.ropeScaling ? `, ${c.ropeScaling.type} scaling ×${c.ropeScaling.factor}` : ""
          })`,
        ],
        ["embeddings", ckpt.tiedEmbeddings ? "tied" : "untied"],
        ...(gguf ? ggufLines(gguf) : []),
        ["KV cache f32", kv(kvBytesPerToken(c, 4))],
        ["KV cache f16", kv(kvBytesPerToken(c, 2))],
        [
          "cached graph",
          cached.length === 0
            ? "none yet (built on first use)"
            : `${def ? "default built" : "default not built"}; ${cached.length} variant(s): ${
              cached.map(describe).join(", ")
            }`,
        ],
      ];
      await writeStdout(lines.map(([k, v]) => `${k.padEnd(13)} ${v}`).join("\n") + "\n");
    });
}

function sameOptions(a: GraphOptions, b: GraphOptions): boolean {
  return a.positions === b.positions && a.kvDtype === b.kvDtype && a.weights === b.weights &&
    a.logits === b.logits;
}

function describe(g: GraphOptions): string {
  const short = (t: string) => (t === "float32" ? "f32" : "f16");
  return `${g.positions}/kv-${short(g.kvDtype)}/w-${g.weights}/logits-${g.logits}`;
}

function ggufLines(g: GgufDescription): string[][] {
  const t = g.tokenizer;
  return [
    ["format", `GGUF v${g.version}${g.name ? ` (${g.name})` : ""}`],
    ["quantization", g.types.map((x) => `${x.type} ${x.tensors} tensors ${formatBytes(x.bytes)}`).join(", ")],
    [
      "tokenizer",
      t.kind === "none"
        ? "none in the file"
        : `${t.kind === "gpt2" ? "byte-level BPE" : t.kind === "llama" ? "SentencePiece BPE" : t.kind} (${t.kind}${
          t.pre ? `, pre ${t.pre}` : ""
        }), ${t.tokens} tokens`,
    ],
    ["chat template", g.chatTemplate ? "present" : "none (plain prompts)"],
  ];
}
