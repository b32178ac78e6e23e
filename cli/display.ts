/**
 * What a reading command shows on stderr: on a terminal, two lines redrawn in
 * place (progress, then memory); piped, a plain line every few seconds; with
 * --quiet, nothing. At the end, a compact report of the memory figures against
 * what the full cache would have needed. With MiKV's low tier, KV bytes are
 * shown per tier too (high, and int4 or int2).
 */
import type { MeterEvent, MeterSummary } from "../core/mod.ts";
import { formatBytes, formatCount, formatSeconds, StatusLine, type StatusMode } from "./progress.ts";
import type { LowTierView } from "./method.ts";

/** Redrawn on a terminal, plain lines when piped, or nothing (--quiet). */
export type DisplayMode = StatusMode;

const encoder = new TextEncoder();

export interface DisplayContext {
  /** Entries per layer and head the budget allows. */
  budget: number;
  /** KV bytes of one token across the model. */
  tokenBytes: number;
  totalBytes: number | null;
  /** MiKV's low tier, when the run keeps evicted entries: its bytes are shown beside the high tier's. */
  lowTier?: LowTierView;
}

/** Piped, a plain progress line at most this often. */
const PLAIN_EVERY_MS = 5000;

/** The live display of a reading command, and its final report. */
export class Display {
  readonly #status: StatusLine;
  #last: MeterEvent | null = null;

  constructor(
    readonly mode: DisplayMode,
    readonly ctx: DisplayContext,
    readonly write: (s: string) => void = (s) => Deno.stderr.writeSync(encoder.encode(s)),
    columns?: () => number,
  ) {
    this.#status = new StatusLine(mode, { plainEvery: PLAIN_EVERY_MS, write, columns });
  }

  /** A meter event: redraws the two lines (throttled), or prints a plain line now and then. */
  event(e: MeterEvent): void {
    this.#last = e;
    if (e.type === "chunk") this.#status.update(() => this.lines(e));
  }

  /** The progress and memory lines for a chunk event. */
  lines(e: Extract<MeterEvent, { type: "chunk" }>): [string, string] {
    const pct = e.fraction !== null ? 100 * e.fraction : null;
    const bar = pct === null ? "" : `${progressBar(pct, 20)} ${pct.toFixed(0).padStart(3)}% `;
    const eta = e.etaSeconds !== null ? ` · ETA ${formatSeconds(e.etaSeconds)}` : "";
    const low = this.ctx.lowTier;
    const budgetBytes = this.ctx.budget * this.ctx.tokenBytes + (low?.budgetBytes ?? 0);
    const tiers = low ? `high ${formatBytes(e.kvHighBytes)} + ${low.name} ${formatBytes(e.kvLowBytes)}, ` : "";
    return [
      `reading ${bar}${formatCount(e.tokens)} tokens · ${formatCount(e.tokensPerSecond)} tok/s${eta}`,
      `KV ${formatBytes(e.kvBytes)} (${tiers}peak ${formatBytes(e.kvPeakBytes)}) of ${
        formatBytes(budgetBytes)
      } budget · footprint ${percent(e.footprint)} · evicted ${formatCount(e.evicted)} · RSS ${
        formatBytes(e.rssBytes)
      }`,
    ];
  }

  /** Clears the live lines (before the answer streams, or at the end). */
  clear(): void {
    this.#status.clear();
  }

  /** The final report (not with --quiet). `interrupted` marks a partial run. */
  report(s: MeterSummary, opts: { interrupted?: boolean; extra?: string[] } = {}): void {
    this.clear();
    if (this.mode === "quiet") return;
    const full = s.fullKvBytes;
    const share = (x: number) => (full > 0 ? ` (${percent(x / full)})` : "");
    const rows = [
      `${opts.interrupted ? "interrupted: " : ""}read ${formatCount(s.documentTokens)} document tokens${
        s.generatedTokens ? `, generated ${formatCount(s.generatedTokens)}` : ""
      } · kept ${formatCount(s.kept)} entries per layer and head · evicted ${formatCount(s.evicted)}`,
      `${"".padEnd(14)}${"this run".padStart(12)}${"full cache".padStart(14)}`,
      `${"KV peak".padEnd(14)}${formatBytes(s.kvPeakBytes).padStart(12)}${formatBytes(full).padStart(14)}${
        share(s.kvPeakBytes)
      }`,
      `${"KV at the end".padEnd(14)}${formatBytes(s.kvBytes).padStart(12)}${formatBytes(full).padStart(14)}${
        share(s.kvBytes)
      }`,
      ...this.#tierRows(s),
      `${"KV footprint".padEnd(14)}${percent(s.footprint).padStart(12)}${"100%".padStart(14)}`,
      ...(Math.abs(s.footprintBytes - s.footprint) > 1e-9
        ? [`${"  in bytes".padEnd(14)}${percent(s.footprintBytes).padStart(12)}${"100%".padStart(14)}`]
        : []),
      `${"peak RSS".padEnd(14)}${formatBytes(s.rssPeakBytes).padStart(12)}`,
      `${"time".padEnd(14)}${
        `prefill ${formatSeconds(s.prefillSeconds)}, decode ${formatSeconds(s.decodeSeconds)}`.padStart(12)
      }`,
      ...(opts.extra ?? []),
    ];
    this.write(rows.map((r) => `tome: ${r}`).join("\n") + "\n");
  }

  /** With a low tier: each tier's bytes at the end and its own peak (none without one). */
  #tierRows(s: MeterSummary): string[] {
    const low = this.ctx.lowTier;
    if (!low) return [];
    const row = (name: string, now: number, peak: number) =>
      `${`  ${name}`.padEnd(14)}${formatBytes(now).padStart(12)}${`peak ${formatBytes(peak)}`.padStart(14)}`;
    return [row("high", s.kvHighBytes, s.kvHighPeakBytes), row(low.name, s.kvLowBytes, s.kvLowPeakBytes)];
  }

  /** The last event seen (for a partial report). */
  get last(): MeterEvent | null {
    return this.#last;
  }
}

function progressBar(pct: number, width: number): string {
  const filled = Math.round((pct / 100) * width);
  return `▕${"█".repeat(filled)}${"░".repeat(width - filled)}▏`;
}

function percent(x: number): string {
  const p = 100 * x;
  return `${p >= 10 ? p.toFixed(0) : p >= 1 ? p.toFixed(1) : p.toFixed(2)}%`;
}
