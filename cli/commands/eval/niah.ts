/** `tome eval niah`: needle recall by policy, budget, length and depth, with a recall heatmap. */
import type { Command } from "commander";
import { loadCorpus } from "../../../core/input/corpus.ts";
import { type NiahRow, runNiah } from "../../../core/eval/niah.ts";
import { criticalFootprint, niahCells, type NiahSummary, summarizeNiah } from "../../../core/eval/summary.ts";
import { heatmap, render } from "../../plot.ts";
import { formatBytes } from "../../progress.ts";
import { note, writeStdout } from "../../output.ts";
import { addEvalOptions, type EvalFlags, type EvalSettings, evalSettings } from "./flags.ts";
import { budgetCell, configLabel, logResults, pct, say, table } from "./report.ts";

/** Runs the needle trials, noting each as it completes. */
export async function niahRows(flags: EvalFlags, s: EvalSettings): Promise<NiahRow[]> {
  const corpus = await loadCorpus(flags.corpus);
  say(flags, `haystacks from ${corpus.source}`);
  const rows: NiahRow[] = [];
  for await (const r of runNiah({ ...s, corpus: corpus.text })) {
    rows.push(r);
    say(
      flags,
      `${configLabel(r)} · ${r.tokens} tokens · depth ${Math.round(100 * r.depth)}% · ${r.exact ? "✓" : "✗"} ${
        JSON.stringify(r.answer.trim().slice(0, 24))
      } (code ${r.code}) · footprint ${pct(r.footprint)} · ${r.seconds.toFixed(1)}s`,
    );
  }
  return rows;
}

/** The recall heatmap: one panel per policy and budget. */
function niahHeatmap(rows: NiahRow[], out: string): Promise<string[]> {
  const cells = niahCells(rows).map((c) => ({
    config: configLabel(c),
    length: c.length,
    depth: c.depth,
    recall: c.recall,
    n: c.trials,
  }));
  return render(heatmap(cells), out, "niah-heatmap");
}

function niahTable(summary: NiahSummary[]): string {
  return table(
    ["policy", "budget", "trials", "recall", "partial", "KV footprint", "in bytes", "peak KV fraction", "KV peak"],
    summary.map((x) => [
      x.policy,
      budgetCell(x.budget),
      x.trials,
      pct(x.recall),
      pct(x.partial),
      pct(x.footprint),
      pct(x.footprint_bytes),
      pct(x.peak_fraction),
      formatBytes(x.kv_peak_bytes),
    ]),
  );
}

/** Adds `tome eval niah`. */
export function niahCommand(ev: Command): void {
  addEvalOptions(
    ev.command("niah").description("needle in a haystack: recall by policy, budget, length and depth"),
    { policy: "full,snapkv,streaming", budget: "1024", lengths: "2048,8192", depths: "0,25,50,75,100" },
  )
    .addHelpText(
      "after",
      "\nExample:\n  tome eval niah -m ./retrieval --policy full,snapkv,streaming --budget 1024 --lengths 2048,8192,32768",
    )
    .action(async (flags: EvalFlags) => {
      const s = await evalSettings(flags);
      const rows = await niahRows(flags, s);
      const summary = summarizeNiah(rows);
      const full = summary.find((x) => x.policy === "full")?.recall;
      const critical = full !== undefined ? criticalFootprint(summary, full) : null;
      const log = await logResults(flags.out, "niah", s, rows);
      const plots = flags.plots ? await niahHeatmap(rows, flags.out) : [];
      if (flags.json) {
        const result = { summary, rows, critical: critical && Object.fromEntries(critical), log, plots };
        return void await writeStdout(JSON.stringify(result) + "\n");
      }
      await writeStdout(niahTable(summary));
      if (!flags.quiet) note(`results appended to ${log}${plots.length ? `; plots: ${plots.join(", ")}` : ""}`);
    });
}
