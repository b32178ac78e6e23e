/**
 * `tome eval niah | curve | ppl | fidelity`: what each policy and budget costs
 * in quality, with the KV footprint it took. Tables on stdout (or --json),
 * plots and an appended JSONL log under --out.
 */
import { type Command, Option } from "commander";
import { join } from "node:path";
import { loadCorpus } from "../../core/input/corpus.ts";
import { criticalFootprint, type NiahRow, runNiah, summarizeNiah } from "../../core/eval/niah.ts";
import { runPpl } from "../../core/eval/ppl.ts";
import { runFidelity } from "../../core/eval/fidelity.ts";
import { chooseDevice, type DeviceRequest, DEVICES } from "../../core/model/device.ts";
import { readConfig } from "../../core/model/config.ts";
import { WEIGHT_CHOICES, type WeightChoice } from "../../core/model/onnx/decoder.ts";
import { resolveRun } from "../../core/mod.ts";
import { needlePrompt } from "../../recipes/needle.ts";
import { fsError } from "../../core/errors.ts";
import { curve, heatmap, render } from "../plot.ts";
import { formatBytes } from "../progress.ts";
import { intFlag, numberFlag, policyOption } from "../options.ts";
import { note, usage, writeStdout } from "../output.ts";
import { modelDir } from "../run.ts";

interface EvalFlags {
  model?: string;
  policy: string;
  budget: string;
  lengths: string;
  depths: string;
  needles: string;
  corpus?: string;
  seed: string;
  chunk: string;
  kvDtype: "f16" | "f32";
  weights: WeightChoice;
  positions: "original" | "compact" | "auto";
  device: DeviceRequest;
  threads?: string;
  json?: boolean;
  quiet?: boolean;
  out: string;
  plots: boolean;
  duoMask?: string;
  duoSparsity?: string;
  retainingHeads?: string;
  text?: string;
  last: string;
}

function common(cmd: Command, defaults: { policy: string; budget: string; lengths: string; depths: string }): Command {
  return cmd
    .option("-m, --model <dir>", "model checkpoint (default: $TOME_MODEL)")
    .addOption(policyOption("policies, comma-separated").default(defaults.policy))
    .option("--budget <list>", "budgets (entries per layer and head), comma-separated", defaults.budget)
    .option("--lengths <list>", "haystack lengths in tokens, comma-separated", defaults.lengths)
    .option("--depths <list>", "needle depths in percent, comma-separated", defaults.depths)
    .option("--needles <k>", "trials per length and depth (different text, name and code)", "1")
    .option(
      "--corpus <file>",
      "text to cut haystacks from (default: ../shared/corpus/war_and_peace.txt, else the project's own text)",
    )
    .option("--seed <n>", "seed for haystacks, names and codes", "0")
    .option("--chunk <n>", "tokens per prefill step", "512")
    .addOption(new Option("--kv-dtype <dtype>", "KV cache element type").choices(["f16", "f32"]).default("f16"))
    .addOption(new Option("--weights <type>", "weight storage").choices(WEIGHT_CHOICES).default("f32"))
    .addOption(
      new Option("--positions <mode>", "position mode").choices(["original", "compact", "auto"]).default("auto"),
    )
    .addOption(new Option("--device <device>", "where the model runs").choices(DEVICES).default("auto"))
    .option("--threads <n>", "CPU threads for onnxruntime")
    .option("--json", "print the results as JSON")
    .option("-q, --quiet", "no progress on stderr")
    .option("--out <dir>", "where plots and the JSONL log go", "tome-eval")
    .option("--no-plots", "no SVG/PNG plots")
    .option("--duo-mask <file>", "duo: head mask TSV")
    .option("--duo-sparsity <x>", "duo: fraction of streaming heads", "0.5")
    .option("--retaining-heads <file>", "locret: retaining heads (safetensors)");
}

const list = (s: string, flag: string) =>
  s.split(",").map((x) => x.trim()).filter(Boolean).map((x) => {
    const n = Number(x);
    if (!Number.isFinite(n) || n < 0) throw usage(`${flag}: "${x}" is not a number`);
    return n;
  });

async function settings(flags: EvalFlags) {
  const model = modelDir(flags);
  const policyNames = flags.policy.split(",").map((x) => x.trim()).filter(Boolean);
  const s = {
    model,
    frame: needlePrompt,
    policies: policyNames,
    budgets: list(flags.budget, "--budget").map((b) => intFlag(String(b), "--budget")!),
    lengths: list(flags.lengths, "--lengths").map((n) => intFlag(String(n), "--lengths")!),
    depths: list(flags.depths, "--depths").map((d) => numberFlag(String(d), "--depths", 0, 100)! / 100),
    needles: intFlag(flags.needles, "--needles")!,
    seed: intFlag(flags.seed, "--seed", 0)!,
    chunk: intFlag(flags.chunk, "--chunk")!,
    kvDtype: flags.kvDtype === "f32" ? "float32" as const : "float16" as const,
    positions: flags.positions,
    threads: intFlag(flags.threads, "--threads"),
    policyOptions: { mask: flags.duoMask, sparsity: numberFlag(flags.duoSparsity, "--duo-sparsity", 0, 1) },
    retainingHeads: flags.retainingHeads,
    weights: flags.weights,
  };
  // every policy and budget resolved once, by the rule runs use, before any model work
  const config = await readConfig(model);
  for (const policy of policyNames) {
    for (const budget of s.budgets) {
      await resolveRun(config, { ...s, policy, budget, positions: "compact" });
    }
  }
  const device = await chooseDevice(flags.device);
  return { ...s, executionProviders: device.providers };
}

/** Appends result lines to `<out>/results.jsonl`. */
async function logResults(
  out: string,
  kind: string,
  settings: Record<string, unknown>,
  rows: unknown[],
): Promise<string> {
  const path = join(out, "results.jsonl");
  const run = { kind, date: new Date().toISOString(), argv: Deno.args, settings };
  try {
    await Deno.mkdir(out, { recursive: true });
    await Deno.writeTextFile(path, rows.map((r) => JSON.stringify({ ...run, result: r })).join("\n") + "\n", {
      append: true,
    });
  } catch (err) {
    throw fsError(err, path, "results log");
  }
  return path;
}

/** An aligned text table. */
function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  return cells.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ")).join(
    "\n",
  ) + "\n";
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

async function niahRows(flags: EvalFlags, s: Awaited<ReturnType<typeof settings>>): Promise<NiahRow[]> {
  const corpus = await loadCorpus(flags.corpus);
  if (!flags.quiet) note(`haystacks from ${corpus.source}`);
  const rows: NiahRow[] = [];
  for await (const r of runNiah({ ...s, corpus: corpus.text })) {
    rows.push(r);
    if (!flags.quiet) {
      note(
        `${r.policy}${r.budget === null ? "" : ` b=${r.budget}`} · ${r.tokens} tokens · depth ${
          Math.round(100 * r.depth)
        }% · ${r.exact ? "✓" : "✗"} ${JSON.stringify(r.answer.trim().slice(0, 24))} (code ${r.code}) · footprint ${
          pct(r.footprint)
        } · ${r.seconds.toFixed(1)}s`,
      );
    }
  }
  return rows;
}

export function evalCommand(program: Command): void {
  const ev = program.command("eval").description(
    "measure what eviction costs in quality: needle recall, perplexity, fidelity, KV footprint",
  );

  common(
    ev.command("niah").description("needle in a haystack: recall by policy, budget, length and depth"),
    { policy: "full,snapkv,streaming", budget: "1024", lengths: "2048,8192", depths: "0,25,50,75,100" },
  )
    .addHelpText(
      "after",
      "\nExample:\n  tome eval niah -m ./retrieval --policy full,snapkv,streaming --budget 1024 --lengths 2048,8192,32768",
    )
    .action(async (flags: EvalFlags) => {
      const s = await settings(flags);
      const rows = await niahRows(flags, s);
      const summary = summarizeNiah(rows);
      const full = summary.find((x) => x.policy === "full")?.recall;
      const critical = full !== undefined ? criticalFootprint(summary, full) : null;
      const log = await logResults(flags.out, "niah", s, rows);
      const plots = flags.plots
        ? await render(
          heatmap(rows.reduce((cells, r) => {
            const config = `${r.policy}${r.budget === null ? "" : ` b=${r.budget}`}`;
            const cell = cells.find((c) =>
              c.config === config && c.length === r.length && c.depth === Math.round(100 * r.depth)
            );
            if (cell) {
              cell.n++;
              cell.recall += ((r.exact ? 1 : 0) - cell.recall) / cell.n;
            } else {cells.push({
                config,
                length: r.length,
                depth: Math.round(100 * r.depth),
                recall: r.exact ? 1 : 0,
                n: 1,
              });}
            return cells;
          }, [] as { config: string; length: number; depth: number; recall: number; n: number }[])),
          flags.out,
          "niah-heatmap",
        )
        : [];
      if (flags.json) {
        return void await writeStdout(
          JSON.stringify({ summary, rows, critical: critical && Object.fromEntries(critical), log, plots }) + "\n",
        );
      }
      await writeStdout(table(
        ["policy", "budget", "trials", "recall", "partial", "KV footprint", "peak KV fraction", "KV peak"],
        summary.map((
          x,
        ) => [
          x.policy,
          x.budget ?? "—",
          x.trials,
          pct(x.recall),
          pct(x.partial),
          pct(x.footprint),
          pct(x.peak_fraction),
          formatBytes(x.kv_peak_bytes),
        ]),
      ));
      if (!flags.quiet) note(`results appended to ${log}${plots.length ? `; plots: ${plots.join(", ")}` : ""}`);
    });

  common(
    ev.command("curve").description(
      "sweep budgets: recall against KV footprint per policy, and each policy's critical KV footprint",
    ),
    {
      policy: "snapkv,pyramidkv,h2o,tova,corm,knorm,streaming",
      budget: "64,128,256,512,1024,2048",
      lengths: "8192",
      depths: "0,25,50,75,100",
    },
  )
    .addHelpText("after", "\nExample:\n  tome eval curve -m ./retrieval --lengths 32768 --budget 256,512,1024,2048")
    .action(async (flags: EvalFlags) => {
      const s = await settings(flags);
      const rows = await niahRows(flags, { ...s, policies: ["full", ...s.policies.filter((p) => p !== "full")] });
      const summary = summarizeNiah(rows);
      const full = summary.find((x) => x.policy === "full")!;
      const critical = criticalFootprint(summary, full.recall);
      const log = await logResults(flags.out, "curve", s, rows);
      const plots = flags.plots
        ? await render(
          curve(
            summary.filter((x) => x.policy !== "full").map((x) => ({
              policy: x.policy,
              budget: x.budget,
              footprint: x.footprint,
              recall: x.recall,
            })),
          ),
          flags.out,
          "niah-curve",
        )
        : [];
      if (flags.json) {
        return void await writeStdout(
          JSON.stringify({ summary, critical: Object.fromEntries(critical), full: full.recall, log, plots }) + "\n",
        );
      }
      const order = [...new Set(summary.map((x) => x.policy))];
      await writeStdout(table(
        ["policy", "budget", "recall", "KV footprint", "peak KV fraction", "critical KV footprint"],
        order.flatMap((p) =>
          summary.filter((x) => x.policy === p).map((x, i) => [
            x.policy,
            x.budget ?? "—",
            pct(x.recall),
            pct(x.footprint),
            pct(x.peak_fraction),
            i === 0 ? (p === "full" ? "—" : critical.get(p) === null ? "not reached" : pct(critical.get(p)!)) : "",
          ])
        ),
      ));
      if (!flags.quiet) {
        note(
          `critical footprint: smallest KV footprint with ≥ 90% of the full cache's recall (${
            pct(full.recall)
          }); log ${log}`,
        );
      }
    });

  common(
    ev.command("ppl").description(
      "perplexity of a text's last tokens given its prefix compressed by each policy vs the full prefix",
    )
      .requiredOption("--text <file>", "the text")
      .option("--last <n>", "tokens scored at the end", "512"),
    { policy: "full,snapkv,streaming", budget: "1024", lengths: "2048", depths: "0" },
  )
    .addHelpText(
      "after",
      "\nExample:\n  tome eval ppl -m ~/models/SmolLM2-360M --text book.txt --policy full,snapkv,knorm --budget 512,2048",
    )
    .action(async (flags: EvalFlags) => {
      const s = await settings(flags);
      let text: string;
      try {
        text = await Deno.readTextFile(flags.text!);
      } catch (err) {
        throw fsError(err, flags.text!, "text");
      }
      const rows = [];
      for await (const r of runPpl({ ...s, text, last: intFlag(flags.last, "--last")! })) {
        rows.push(r);
        if (!flags.quiet) {
          note(
            `${r.policy}${r.budget === null ? "" : ` b=${r.budget}`}: ppl ${r.ppl.toFixed(3)} · footprint ${
              pct(r.footprint)
            }`,
          );
        }
      }
      const full = rows.find((r) => r.policy === "full");
      const log = await logResults(flags.out, "ppl", s, rows);
      if (flags.json) return void await writeStdout(JSON.stringify({ rows, log }) + "\n");
      await writeStdout(table(
        ["policy", "budget", "perplexity", "vs full", "KV footprint", "peak KV fraction"],
        rows.map((
          r,
        ) => [
          r.policy,
          r.budget ?? "—",
          r.ppl.toFixed(3),
          full ? `${((r.ppl / full.ppl - 1) * 100).toFixed(2)}%` : "—",
          pct(r.footprint),
          pct(r.peak_fraction),
        ]),
      ));
    });

  common(
    ev.command("fidelity").description(
      "KL divergence of next-token distributions, evicted vs full, at the answer positions",
    ),
    { policy: "snapkv,streaming", budget: "256,1024", lengths: "2048", depths: "0,50,100" },
  )
    .addHelpText(
      "after",
      "\nExample:\n  tome eval fidelity -m ./retrieval --policy snapkv,h2o --budget 256,1024 --lengths 8192",
    )
    .action(async (flags: EvalFlags) => {
      const s = await settings(flags);
      const corpus = await loadCorpus(flags.corpus);
      const rows = [];
      for await (const r of runFidelity({ ...s, corpus: corpus.text })) {
        rows.push(r);
        if (!flags.quiet) {
          note(
            `${r.policy} b=${r.budget} · depth ${Math.round(100 * r.depth)}% · KL ${r.kl.toFixed(4)} · top-1 ${
              r.top1_agree ? "agrees" : "differs"
            }`,
          );
        }
      }
      const log = await logResults(flags.out, "fidelity", s, rows);
      if (flags.json) return void await writeStdout(JSON.stringify({ rows, log }) + "\n");
      const groups = new Map<string, typeof rows>();
      for (const r of rows) {
        groups.set(`${r.policy}\u0000${r.budget}`, [...(groups.get(`${r.policy}\u0000${r.budget}`) ?? []), r]);
      }
      await writeStdout(table(
        ["policy", "budget", "trials", "mean KL (nats)", "top-1 agreement", "KV footprint", "peak KV fraction"],
        [...groups.values()].map((g) => [
          g[0].policy,
          g[0].budget ?? "—",
          g.length,
          (g.reduce((a, r) => a + r.kl, 0) / g.length).toFixed(4),
          pct(g.filter((r) => r.top1_agree).length / g.length),
          pct(g.reduce((a, r) => a + r.footprint, 0) / g.length),
          pct(g.reduce((a, r) => a + r.peak_fraction, 0) / g.length),
        ]),
      ));
    });
}
