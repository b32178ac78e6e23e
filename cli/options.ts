/** The options every reading command (ask, summarize, code, estimate) shares. */
import { type Command, Option } from "commander";
import { DEFAULT_BUDGET, DEFAULT_CHUNK } from "../core/mod.ts";
import { DEVICES } from "../core/model/device.ts";
import { DEFAULT_POLICY, FILE_POLICIES, POLICIES } from "../core/policies/mod.ts";
import { usage } from "./output.ts";

/** Parsed common flags (commander's camelCase names). */
export interface RunFlags {
  model?: string;
  budget: string;
  chunk: string;
  policy: string;
  positions: "original" | "compact" | "auto";
  device: "auto" | "cpu" | "webgpu" | "cuda";
  kvDtype: "f16" | "f32";
  threads?: string;
  maxTokens?: string;
  temperature?: string;
  topP?: string;
  seed: string;
  system?: string;
  json?: boolean;
  quiet?: boolean;
  metrics?: string;
  progress: boolean;
  questionPatch: boolean;
  decodeBudget?: string;
  duoMask?: string;
  duoSparsity?: string;
  retainingHeads?: string;
}

/** Adds the common options to a command. */
export function addRunOptions(cmd: Command): Command {
  return cmd
    .option("-m, --model <model>", "checkpoint directory, FILE.gguf or ollama:NAME[:TAG] (default: $TOME_MODEL)")
    .option(
      "-b, --budget <n|size>",
      "KV entries kept per layer and head, or a size like 256MiB",
      String(DEFAULT_BUDGET),
    )
    .option("--chunk <n>", "tokens per prefill step", String(DEFAULT_CHUNK))
    .addOption(
      new Option("--policy <name>", "eviction policy").choices([...Object.keys(POLICIES), ...FILE_POLICIES]).default(
        DEFAULT_POLICY,
      ),
    )
    .addOption(
      new Option("--positions <mode>", "original positions (input must fit the context), compact, or auto").choices([
        "original",
        "compact",
        "auto",
      ])
        .default("auto"),
    )
    .addOption(new Option("--device <device>", "where the model runs").choices(DEVICES).default("auto"))
    .addOption(new Option("--kv-dtype <dtype>", "KV cache element type").choices(["f16", "f32"]).default("f16"))
    .option("--threads <n>", "CPU threads for onnxruntime")
    .option("--max-tokens <n>", "most tokens to generate")
    .option("--temperature <t>", "sampling temperature (0: greedy)")
    .option("--top-p <p>", "nucleus sampling")
    .option("--seed <n>", "random seed for sampling", "0")
    .option("--system <text>", "system prompt")
    .option("--json", "print one JSON object at the end instead of streaming the answer")
    .option("-q, --quiet", "nothing on stderr but errors")
    .option("--metrics <file>", "write every meter event to FILE as NDJSON")
    .option("--no-progress", "no live progress display")
    .option("--no-question-patch", "do not ride the question along each chunk as the observation window")
    .option("--decode-budget <n>", "also evict while generating, keeping N entries per layer and head")
    .option("--duo-mask <file>", "duo: head mask TSV (rows = layers, columns = KV heads)")
    .option("--duo-sparsity <x>", "duo: fraction of heads made streaming heads", "0.5")
    .option("--retaining-heads <file>", "locret: retaining heads (safetensors)");
}

/** A positive integer flag, or a usage error. */
export function intFlag(v: string | undefined, flag: string, min = 1): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw usage(`${flag} must be an integer ≥ ${min}, got ${v}`);
  return n;
}

/** A number flag within [lo, hi], or a usage error. */
export function numberFlag(v: string | undefined, flag: string, lo: number, hi: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < lo || n > hi) throw usage(`${flag} must be a number in [${lo}, ${hi}], got ${v}`);
  return n;
}

/** A policy that reads retaining-head scores (locret) needs `--retaining-heads FILE`, or a usage error. */
export function requireRetainingHeads(policy: { name: string; retain?: boolean }, file: string | undefined): void {
  if (policy.retain && !file) throw usage(`--policy ${policy.name} needs --retaining-heads FILE`);
}
