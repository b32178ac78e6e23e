/**
 * `tome eval niah | curve | ppl | fidelity`: what each policy and budget costs
 * in quality, with the KV footprint it took. Tables on stdout (or --json),
 * plots and an appended JSONL log under --out. One file per subcommand in
 * `eval/`; what the trials add up to is computed in `core/eval/summary.ts`.
 */
import type { Command } from "commander";
import { curveCommand } from "./eval/curve.ts";
import { fidelityCommand } from "./eval/fidelity.ts";
import { niahCommand } from "./eval/niah.ts";
import { pplCommand } from "./eval/ppl.ts";

/** Adds `tome eval` and its subcommands. */
export function evalCommand(program: Command): void {
  const ev = program.command("eval").description(
    "measure what eviction costs in quality: needle recall, perplexity, fidelity, KV footprint",
  );
  niahCommand(ev);
  curveCommand(ev);
  pplCommand(ev);
  fidelityCommand(ev);
}
