/** `tome eval curve`: recall against KV footprint over a sweep of budgets, and each policy's critical footprint. */
import type { Command } from "commander";
import { criticalFootprint, type NiahSummary, summarizeNiah } from "../../../core/eval/summary.ts";
import { curve, render } from "../../plot.ts";
import { writeStdout } from "../../output.ts";
import { formatBytes } from "../../progress.ts";
import { addEvalOptions, type EvalFlags, evalSettings } from "./flags.ts";
import { niahRows } from "./niah.ts";
import { budgetCell, logResults, pct, say, table } from "./report.ts";

function curveTable(
  summary: NiahSummary[],
  critical: Map<string, number | null>,
  criticalBytes: Map<string, number | null>,
): string {
  const cell = (p: string, m: Map<string, number | null>) =>
    p === "full" ? "—" : m.get(p) === null ? "not reached" : pct(m.get(p)!);
  const order = [...new Set(summary.map((x) => x.policy))];
  return table(
    [
      "policy",
      "budget",
      "recall",
      "KV peak",
      "KV footprint",
      "in bytes",
      "peak KV fraction",
      "critical KV footprint",
      "in bytes",
    ],
    order.flatMap((p) =>
      summary.filter((x) => x.policy === p).map((x, i) => [
        x.policy,
        budgetCell(x.budget),
        pct(x.recall),
        formatBytes(x.kv_peak_bytes),
        pct(x.footprint),
        pct(x.footprint_bytes),
        pct(x.peak_fraction),
        i === 0 ? cell(p, critical) : "",
        i === 0 ? cell(p, criticalBytes) : "",
      ])
    ),
  );
}

/** Adds `tome eval curve`. */
export function curveCommand(ev: Command): void {
  addEvalOptions(
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
      const s = await evalSettings(flags);
      // the full cache runs first: the critical footprint is measured against its recall
      const rows = await niahRows(flags, { ...s, policies: ["full", ...s.policies.filter((p) => p !== "full")] });
      const summary = summarizeNiah(rows);
      const full = summary.find((x) => x.policy === "full")!;
      const critical = criticalFootprint(summary, full.recall);
      const criticalBytes = criticalFootprint(summary, full.recall, 0.9, true);
      const log = await logResults(flags.out, "curve", s, rows);
      const points = summary.filter((x) => x.policy !== "full").map((x) => ({
        policy: x.policy,
        budget: x.budget,
        footprint: x.footprint,
        recall: x.recall,
      }));
      const plots = flags.plots ? await render(curve(points), flags.out, "niah-curve") : [];
      if (flags.json) {
        const result = {
          summary,
          critical: Object.fromEntries(critical),
          critical_bytes: Object.fromEntries(criticalBytes),
          full: full.recall,
          log,
          plots,
        };
        return void await writeStdout(JSON.stringify(result) + "\n");
      }
      await writeStdout(curveTable(summary, critical, criticalBytes));
      say(
        flags,
        `critical footprint: smallest KV footprint with ≥ 90% of the full cache's recall (${
          pct(full.recall)
        }); log ${log}`,
      );
    });
}
