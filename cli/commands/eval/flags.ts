/**
 * The flags every `tome eval` subcommand takes (the shared run options, plus
 * the swept lists), and the settings they resolve to before any model work.
 */
import type { Command } from "commander";
import { defaultChunk, resolveRun } from "../../../core/mod.ts";
import { readConfig } from "../../../core/model/config.ts";
import type { LowTier } from "../../../core/model/onnx/low_tier.ts";
import { chooseDevice } from "../../../core/model/device.ts";
import { needlePrompt } from "../../../recipes/needle.ts";
import {
  addShared,
  intFlag,
  keyChannelsFlag,
  kvDtypeFlag,
  type ModelFlags,
  numberFlag,
  policyOption,
  sharedOption,
} from "../../options.ts";
import { usage } from "../../output.ts";
import { chosenWeights, modelDir } from "../../run.ts";

/** Parsed `tome eval` flags (commander's camelCase names). */
export interface EvalFlags extends ModelFlags {
  budget: string;
  lengths: string;
  depths: string;
  needles: string;
  corpus?: string;
  seed: string;
  json?: boolean;
  quiet?: boolean;
  out: string;
  plots: boolean;
  text?: string;
  last: string;
  merge: string;
  keyChannels?: string;
  keepEvicted?: string;
  lowBudget?: string;
}

/** A subcommand's defaults for the lists it sweeps. */
export interface EvalDefaults {
  policy: string;
  budget: string;
  lengths: string;
  depths: string;
}

/** Adds the options every `tome eval` subcommand takes. */
export function addEvalOptions(cmd: Command, defaults: EvalDefaults): Command {
  addShared(cmd, "model")
    .addOption(policyOption("policies, comma-separated").default(defaults.policy))
    .option(
      "--budget <list>",
      "budgets, comma-separated: entries per layer and head, or sizes (256KiB: the whole KV, every method at equal bytes)",
      defaults.budget,
    )
    .option("--lengths <list>", "haystack lengths in tokens, comma-separated", defaults.lengths)
    .option("--depths <list>", "needle depths in percent, comma-separated", defaults.depths)
    .option("--needles <k>", "trials per length and depth (different text, name and code)", "1")
    .option(
      "--corpus <file>",
      "text to cut haystacks from (default: ../shared/corpus/war_and_peace.txt, else the project's own text)",
    )
    .option("--seed <n>", "seed for haystacks, names and codes", "0")
    .option(
      "--merge <list>",
      "merge methods, comma-separated: none (the policy's own: ems merges, others drop), drop, d2o, kvmerger, anchors, ems (not fidelity)",
      "none",
    )
    .option("--key-channels <fraction>", "ThinK: fraction of key channels kept for old entries (1: off; not fidelity)")
    .option(
      "--keep-evicted <tier>",
      "MiKV: keep evicted entries in a low tier, int4 or int2 (original positions; not fidelity)",
    )
    .option(
      "--low-budget <n|size>",
      "MiKV: low-tier entries per layer and head, or a size (default: the high tier's bytes)",
    );
  return addShared(cmd, "chunk", "kvDtype", "weights", "positions", "device", "threads")
    .option("--json", "print the results as JSON")
    .option("-q, --quiet", "no progress on stderr")
    .option("--out <dir>", "where plots and the JSONL log go", "tome-eval")
    .option("--no-plots", "no SVG/PNG plots")
    .addOption(sharedOption("duoMask"))
    .addOption(sharedOption("duoSparsity"))
    .addOption(sharedOption("retainingHeads"));
}

/** `"1, 2,3"` → `[1, 2, 3]`; each entry checked by `check` (a usage error names `flag`). */
function list<T>(s: string, flag: string, check: (x: string) => T): T[] {
  return s.split(",").map((x) => x.trim()).filter(Boolean).map((x) => {
    const n = Number(x);
    if (!Number.isFinite(n) || n < 0) throw usage(`${flag}: "${x}" is not a number`);
    return check(String(n));
  });
}

/**
 * The evaluation's settings from its flags: every list parsed, and every
 * policy × budget resolved by the rule runs use, before any model work.
 */
export async function evalSettings(flags: EvalFlags) {
  const model = modelDir(flags);
  const policies = flags.policy.split(",").map((x) => x.trim()).filter(Boolean);
  const s = {
    model,
    frame: needlePrompt,
    policies,
    // a size is checked by resolveRun below
    budgets: flags.budget.split(",").map((x) => x.trim()).filter(Boolean).map((x) =>
      /^[\d.]+$/.test(x) ? intFlag(x, "--budget")! : x
    ),
    lengths: list(flags.lengths, "--lengths", (x) => intFlag(x, "--lengths")!),
    depths: list(flags.depths, "--depths", (x) => numberFlag(x, "--depths", 0, 100)! / 100),
    needles: intFlag(flags.needles, "--needles")!,
    seed: intFlag(flags.seed, "--seed", 0)!,
    chunk: intFlag(flags.chunk, "--chunk") ?? defaultChunk(await chosenWeights(model, flags.weights)),
    kvDtype: kvDtypeFlag(flags.kvDtype),
    weights: flags.weights,
    positions: flags.positions,
    threads: intFlag(flags.threads, "--threads"),
    policyOptions: { mask: flags.duoMask, sparsity: numberFlag(flags.duoSparsity, "--duo-sparsity", 0, 1) },
    retainingHeads: flags.retainingHeads,
    merges: flags.merge.split(",").map((x) => x.trim()).filter(Boolean),
    keyChannels: keyChannelsFlag(flags.keyChannels),
    keepEvicted: flags.keepEvicted as LowTier | undefined, // checked by resolveRun below
    lowBudget: flags.lowBudget,
  };
  const config = await readConfig(model);
  for (const policy of policies) {
    for (const merge of s.merges) {
      for (const budget of s.budgets) {
        // the low tier needs original positions: checked as it will run
        await resolveRun(config, { ...s, policy, budget, merge, positions: s.keepEvicted ? "original" : "compact" });
      }
    }
  }
  const device = await chooseDevice(flags.device);
  return { ...s, executionProviders: device.providers };
}

/** What {@link evalSettings} resolves to. */
export type EvalSettings = Awaited<ReturnType<typeof evalSettings>>;
