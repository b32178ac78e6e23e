/**
 * The options of the commands that run a model: the ones every such command
 * shares are defined once here (defaults from core), each command adds its own.
 */
import { type Command, Option } from "commander";
import { DEFAULT_BUDGET, DEFAULT_CHUNK, QUANTIZED_CHUNK } from "../core/mod.ts";
import { type DeviceRequest, DEVICES } from "../core/model/device.ts";
import { WEIGHT_CHOICES, type WeightChoice } from "../core/model/onnx/decoder.ts";
import { DEFAULT_POLICY, FILE_POLICIES, POLICIES, PYRAMID_PREFIX } from "../core/policies/mod.ts";
import { dirname, join, resolve } from "node:path";
import { TomeError } from "../core/errors.ts";
import { usage } from "./output.ts";

/** Flags every command that runs a model shares (commander's camelCase names). */
export interface ModelFlags {
  model?: string;
  chunk?: string;
  policy: string;
  positions: "original" | "compact" | "auto";
  device: DeviceRequest;
  kvDtype: "f16" | "f32";
  weights: WeightChoice;
  threads?: string;
  duoMask?: string;
  duoSparsity?: string;
  retainingHeads?: string;
}

/** Parsed flags of a reading command (ask, summarize, code, estimate). */
export interface RunFlags extends ModelFlags {
  budget: string;
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
  merge?: string;
  keyChannels?: string;
  keepEvicted?: string;
  lowBudget?: string;
  state?: string;
  save?: string;
  cache?: boolean;
}

/** The options that mean the same in every command that runs a model: one definition each, defaults from core. */
const SHARED = {
  model: () =>
    new Option("-m, --model <model>", "checkpoint directory, FILE.gguf or ollama:NAME[:TAG] (default: $TOME_MODEL)"),
  chunk: () =>
    new Option(
      "--chunk <n>",
      `tokens per prefill step (default: ${DEFAULT_CHUNK}, ${QUANTIZED_CHUNK} with q8/q4 weights)`,
    ),
  positions: () =>
    new Option("--positions <mode>", "original positions (input must fit the context), compact, or auto")
      .choices(["original", "compact", "auto"]).default("auto"),
  device: () => new Option("--device <device>", "where the model runs").choices(DEVICES).default("auto"),
  kvDtype: () => new Option("--kv-dtype <dtype>", "KV cache element type").choices(["f16", "f32"]).default("f16"),
  weights: () =>
    new Option(
      "--weights <type>",
      "weight storage: f32, q8 (half the memory), q4, f16, bf16, or auto (the checkpoint's)",
    )
      .choices(WEIGHT_CHOICES).default("f32"),
  threads: () => new Option("--threads <n>", "CPU threads for onnxruntime"),
  duoMask: () => new Option("--duo-mask <file>", "duo: head mask TSV (rows = layers, columns = KV heads)"),
  duoSparsity: () => new Option("--duo-sparsity <x>", "duo: fraction of heads made streaming heads").default("0.5"),
  retainingHeads: () => new Option("--retaining-heads <file>", "locret: retaining heads (safetensors)"),
} satisfies Record<string, () => Option>;

/** The name of a shared option. */
export type SharedOption = keyof typeof SHARED;

/** A new instance of a shared option (commander options belong to one command each). */
export function sharedOption(name: SharedOption): Option {
  return SHARED[name]();
}

/** Adds the named shared options to a command, in the order given. */
export function addShared(cmd: Command, ...names: SharedOption[]): Command {
  for (const name of names) cmd.addOption(sharedOption(name));
  return cmd;
}

/** Adds the options of a reading command. */
export function addRunOptions(cmd: Command): Command {
  addShared(cmd, "model")
    .option(
      "-b, --budget <n|size>",
      "KV entries kept per layer and head, or a size like 256MiB (the whole KV cache, every tier)",
      String(DEFAULT_BUDGET),
    );
  addShared(cmd, "chunk").addOption(policyOption());
  return addShared(cmd, "positions", "device", "kvDtype", "weights", "threads")
    .option("--max-tokens <n>", "most tokens to generate")
    .option("--temperature <t>", "sampling temperature (0: greedy)")
    .option("--top-p <p>", "nucleus sampling")
    .option("--seed <n>", "random seed for sampling", "0")
    .option("--system <text>", "system prompt")
    .option("--json", "print one JSON object at the end instead of streaming the answer")
    .option(cmd.options.some((o) => o.short === "-q") ? "--quiet" : "-q, --quiet", "nothing on stderr but errors")
    .option("--metrics <file>", "write every meter event to FILE as NDJSON")
    .option("--no-progress", "no live progress display")
    .option("--no-question-patch", "do not ride the question along each chunk as the observation window")
    .option("--decode-budget <n>", "also evict while generating, keeping N entries per layer and head")
    .option(
      "--merge <method>",
      "fold evicted entries into kept ones: d2o, kvmerger, anchors, ems (default none: the policy's own, only ems has one; drop: drop even under ems)",
    )
    .option(
      "--key-channels <fraction>",
      "ThinK: keep this fraction of key channels (by key magnitude) for all but the newest 32 entries (the observation window; 1: off)",
    )
    .option(
      "--keep-evicted <bits>",
      "MiKV: keep evicted entries in a low tier at int4 or int2 instead of dropping them (original positions only)",
    )
    .option(
      "--low-budget <n|size>",
      "low-tier entries per layer and head, or a size such as 64MiB (default: the high tier's bytes; half a --budget size)",
    )
    .addOption(sharedOption("duoMask"))
    .addOption(sharedOption("duoSparsity"))
    .addOption(sharedOption("retainingHeads"))
    .option("--state <file>", "answer from a saved reading state (tome read --save) instead of reading INPUT")
    .option("--save <file>", "also save the compressed reading state to FILE")
    .option("--cache", "save reading states under the cache directory and reuse them for the same input and options");
}

/** `--policy NAME`: one of the policies, or `pyramid:NAME` (PyramidKV's schedule over a scored policy). */
export function policyOption(description = "eviction policy"): Option {
  const names = [...Object.keys(POLICIES), ...FILE_POLICIES];
  // the choices are listed (help, completions); the parser also takes pyramid:NAME and comma lists
  return new Option("--policy <name>", `${description}, or pyramid:NAME`)
    .choices(names)
    .default(DEFAULT_POLICY)
    .argParser((v: string) => {
      for (const one of v.split(",")) {
        const base = one.startsWith(PYRAMID_PREFIX) ? one.slice(PYRAMID_PREFIX.length) : one;
        if (!names.includes(base)) {
          throw usage(`--policy: unknown policy "${one}" (one of: ${names.join(", ")}, or pyramid:NAME)`);
        }
      }
      return v;
    });
}

/** A positive integer flag, or a usage error. */
export function intFlag(v: string | undefined, flag: string, min = 1): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw usage(`${flag} must be an integer ≥ ${min}, got ${v}`);
  return n;
}

/** `--key-channels`: a fraction in (0, 1], or a usage error. */
export function keyChannelsFlag(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0 || n > 1) throw usage(`--key-channels must be a fraction in (0, 1], got ${v}`);
  return n;
}

/** A number flag within [lo, hi], or a usage error. */
export function numberFlag(v: string | undefined, flag: string, lo: number, hi: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < lo || n > hi) throw usage(`${flag} must be a number in [${lo}, ${hi}], got ${v}`);
  return n;
}

/** A file the run will write: its directory must exist and be writable, and it must not be a directory (usage, exit 13). */
export async function checkWritable(path: string, flag: string): Promise<void> {
  const dir = dirname(resolve(path));
  try {
    const st = await Deno.stat(path).catch((err) => {
      if (err instanceof Deno.errors.NotFound) return null;
      throw err;
    });
    if (st?.isDirectory) throw new TomeError("output", `${flag} ${path} is a directory`);
    const d = await Deno.stat(dir);
    if (!d.isDirectory) throw new TomeError("output", `${flag} ${path}: ${dir} is not a directory`);
    const probe = join(dir, `.tome-write-probe-${Deno.pid}`);
    // one byte, not none: a full disk still has room for an empty file
    const f = await Deno.open(probe, { write: true, createNew: true });
    try {
      await f.write(new Uint8Array(1));
    } finally {
      f.close();
      await Deno.remove(probe);
    }
  } catch (err) {
    if (err instanceof TomeError) throw err;
    throw new TomeError("output", `${flag} ${path} cannot be written: ${(err as Error).message}`);
  }
}

/** `--kv-dtype f16|f32` as the KV store's element type. */
export function kvDtypeFlag(v: "f16" | "f32"): "float16" | "float32" {
  return v === "f32" ? "float32" : "float16";
}

/** A repeatable option's values, in order (`-q A -q B`). */
export function collectOption(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}
