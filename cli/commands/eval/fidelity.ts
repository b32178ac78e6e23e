/** `tome eval fidelity`: KL divergence from the full cache's next-token distributions at the answer positions. */
import type { Command } from "commander";
import { loadCorpus } from "../../../core/input/corpus.ts";
import { type FidelityRow, runFidelity } from "../../../core/eval/fidelity.ts";
import { summarizeFidelity } from "../../../core/eval/summary.ts";
import { writeStdout } from "../../output.ts";
import { usage } from "../../output.ts";
import { addEvalOptions, type EvalFlags, evalSettings } from "./flags.ts";
import { budgetCell, logResults, pct, say, table } from "./report.ts";

function fidelityTable(rows: FidelityRow[]): string {
  return table(
    ["policy", "budget", "trials", "mean KL (nats)", "top-1 agreement", "KV footprint", "peak KV fraction"],
    summarizeFidelity(rows).map((x) => [
      x.policy,
      budgetCell(x.budget),
      x.trials,
      x.kl.toFixed(4),
      pct(x.top1_agreement),
      pct(x.footprint),
      pct(x.peak_fraction),
    ]),
  );
}

/** Adds `tome eval fidelity`. */
export function fidelityCommand(ev: Command): void {
  addEvalOptions(
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
      const s = await evalSettings(flags);
      const kept = s.merges.some((m) => m !== "none") || s.keyChannels !== undefined || s.keepEvicted !== undefined;
      if (kept) {
        throw usage(
          "tome eval fidelity compares drop-only policies: --merge, --key-channels and --keep-evicted are for niah, curve and ppl",
        );
      }
      const corpus = await loadCorpus(flags.corpus);
      const rows: FidelityRow[] = [];
      for await (const r of runFidelity({ ...s, corpus: corpus.text })) {
        rows.push(r);
        say(
          flags,
          `${r.policy} b=${r.budget} · depth ${Math.round(100 * r.depth)}% · KL ${r.kl.toFixed(4)} · top-1 ${
            r.top1_agree ? "agrees" : "differs"
          }`,
        );
      }
      const log = await logResults(flags.out, "fidelity", s, rows);
      await writeStdout(flags.json ? JSON.stringify({ rows, log }) + "\n" : fidelityTable(rows));
    });
}
