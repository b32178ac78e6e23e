/**
 * What a reading command shows on stderr: on a terminal, two lines redrawn in
 * place (progress, then memory); piped, a plain line every few seconds; with
 * --quiet, nothing. At the end, a compact report of the memory figures against
 * what the full cache would have needed.
 */
import type { MeterEvent, MeterSummary } from "../core/mod.ts";
import { formatBytes, formatCount, formatSeconds } from "./progress.ts";

export type DisplayMode = "tty" | "plain" | "quiet";

export interface DisplayContext {
  /** Entries per layer and head the budget allows. */
  budget: number;
  /** KV bytes of one token across the model. */
  tokenBytes: number;
  totalBytes: number | null;
}

const encoder = new TextEncoder();
const PLAIN_EVERY_MS = 5000;

export class Display {
  #lines = 0;
  #lastDraw = 0;
  #lastPlain = -Infinity;
  #last: MeterEvent | null = null;

  constructor(
    readonly mode: DisplayMode,
    readonly ctx: DisplayContext,
    readonly write: (s: string) => void = (s) => Deno.stderr.writeSync(encoder.encode(s)),
    readonly columns: () => number = () => {
      try {
        return Deno.consoleSize().columns || 100;
      } catch {
        return 100;
      }
    },
  ) {}

  /** A meter event: redraws (throttled), or prints a plain line now and then. */
  event(e: MeterEvent): void {
    this.#last = e;
    if (e.type !== "chunk") return;
    const now = performance.now();
    if (this.mode === "tty" && now - this.#lastDraw >= 100) {
      this.#lastDraw = now;
      this.#draw(this.lines(e));
    } else if (this.mode === "plain" && now - this.#lastPlain >= PLAIN_EVERY_MS) {
      this.#lastPlain = now;
      this.write(`tome: ${this.lines(e).join(" · ")}\n`);
    }
  }

  /** The progress and memory lines for a chunk event. */
  lines(e: Extract<MeterEvent, { type: "chunk" }>): [string, string] {
    const pct = e.fraction !== null ? 100 * e.fraction : null;
    const bar = pct === null ? "" : `${progressBar(pct, 20)} ${pct.toFixed(0).padStart(3)}% `;
    const eta = e.etaSeconds !== null ? ` · ETA ${formatSeconds(e.etaSeconds)}` : "";
    const budgetBytes = this.ctx.budget * this.ctx.tokenBytes;
    return [
      `reading ${bar}${formatCount(e.tokens)} tokens · ${formatCount(e.tokensPerSecond)} tok/s${eta}`,
      `KV ${formatBytes(e.kvBytes)} (peak ${formatBytes(e.kvPeakBytes)}) of ${
        formatBytes(budgetBytes)
      } budget · footprint ${percent(e.footprint)} · evicted ${formatCount(e.evicted)} · RSS ${
        formatBytes(e.rssBytes)
      }`,
    ];
  }

  /** Clears the live lines (before the answer streams, or at the end). */
  clear(): void {
    if (this.mode !== "tty" || this.#lines === 0) return;
    this.write(this.#lines === 2 ? "\r\x1b[2K\x1b[1A\r\x1b[2K" : "\r\x1b[2K");
    this.#lines = 0;
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
      `${"KV footprint".padEnd(14)}${percent(s.footprint).padStart(12)}${"100%".padStart(14)}`,
      `${"peak RSS".padEnd(14)}${formatBytes(s.rssPeakBytes).padStart(12)}`,
      `${"time".padEnd(14)}${
        `prefill ${formatSeconds(s.prefillSeconds)}, decode ${formatSeconds(s.decodeSeconds)}`.padStart(12)
      }`,
      ...(opts.extra ?? []),
    ];
    this.write(rows.map((r) => `tome: ${r}`).join("\n") + "\n");
  }

  /** The last event seen (for a partial report). */
  get last(): MeterEvent | null {
    return this.#last;
  }

  #draw(lines: string[]): void {
    const width = Math.max(20, this.columns());
    const fit = (l: string) => (l.length >= width ? l.slice(0, width - 1) : l);
    const up = this.#lines === 2 ? "\x1b[1A" : "";
    this.write(`\r\x1b[2K${up}\r\x1b[2K${fit(lines[0])}\n\x1b[2K${fit(lines[1])}`);
    this.#lines = 2;
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
