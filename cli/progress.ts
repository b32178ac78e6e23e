/**
 * How progress shows on stderr: one status-line renderer (redrawn in place on
 * a terminal, plain lines now and then when piped, nothing when quiet) shared
 * by `tome tokens` and the live display of reading commands, and the number
 * formats they print.
 */

/** Where the live lines go: redrawn on a terminal, plain lines when piped, or nowhere. */
export type StatusMode = "tty" | "plain" | "quiet";

/** Redraws on a terminal at most this often. */
export const REDRAW_EVERY_MS = 100;
/** Columns assumed when the terminal does not say. */
export const FALLBACK_COLUMNS = 80;

const encoder = new TextEncoder();
const CLEAR_LINE = "\r\x1b[2K";
const UP = "\x1b[1A";

export interface StatusLineOptions {
  /** Plain lines are written at most this often (0: never; the default). */
  plainEvery?: number;
  write?: (s: string) => void;
  /** The terminal's width in columns. */
  columns?: () => number;
  /** Milliseconds, for the throttles. */
  now?: () => number;
}

/**
 * One or more status lines on stderr. On a terminal they are redrawn in place
 * (at most every {@link REDRAW_EVERY_MS} ms, each cut to the terminal's
 * width) and cleared at the end; piped, they are written as one plain
 * `tome: a · b` line every `plainEvery` ms (the first at once); quiet, never.
 *
 * @example
 * ```ts
 * const status = new StatusLine(Deno.stderr.isTerminal() ? "tty" : "quiet");
 * status.update(() => [`tokens ${n}`]);
 * status.clear();
 * ```
 */
export class StatusLine {
  #shown = 0;
  #lastDraw = -Infinity;
  #lastPlain = -Infinity;
  readonly #write: (s: string) => void;
  readonly #columns: () => number;
  readonly #now: () => number;
  readonly #plainEvery: number;

  constructor(readonly mode: StatusMode, opts: StatusLineOptions = {}) {
    this.#write = opts.write ?? ((s) => Deno.stderr.writeSync(encoder.encode(s)));
    this.#columns = opts.columns ?? terminalColumns;
    this.#now = opts.now ?? (() => performance.now());
    this.#plainEvery = opts.plainEvery ?? 0;
  }

  /** Shows `lines` (computed only when drawn), throttled; `force` draws now. */
  update(lines: string[] | (() => string[]), force = false): void {
    const now = this.#now();
    if (this.mode === "tty") {
      if (!force && now - this.#lastDraw < REDRAW_EVERY_MS) return;
      this.#lastDraw = now;
      const width = Math.max(20, this.#columns() || FALLBACK_COLUMNS);
      const fit = (l: string) => (l.length >= width ? l.slice(0, width - 1) : l);
      const text = (typeof lines === "function" ? lines() : lines).map(fit);
      this.#write(`${this.#erase()}${text.join(`\n\x1b[2K`)}`);
      this.#shown = text.length;
    } else if (this.mode === "plain" && this.#plainEvery > 0) {
      if (!force && now - this.#lastPlain < this.#plainEvery) return;
      this.#lastPlain = now;
      this.#write(`tome: ${(typeof lines === "function" ? lines() : lines).join(" · ")}\n`);
    }
  }

  /** Removes the lines from a terminal (before an answer streams, or at the end). */
  clear(): void {
    if (this.mode !== "tty" || this.#shown === 0) return;
    this.#write(this.#erase());
    this.#shown = 0;
  }

  /** Clears the current line and moves up over the others shown. */
  #erase(): string {
    return CLEAR_LINE + `${UP}${CLEAR_LINE}`.repeat(Math.max(0, this.#shown - 1));
  }
}

function terminalColumns(): number {
  try {
    return Deno.consoleSize().columns;
  } catch {
    return FALLBACK_COLUMNS;
  }
}

/** `1536` → `"1.5 KiB"`. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[u]}`;
}

/** `12345` → `"12.3K"`. */
export function formatCount(n: number): string {
  if (n < 1000) return String(Math.round(n));
  if (n < 1e6) return `${(n / 1e3).toFixed(n < 1e4 ? 2 : 1)}K`;
  return `${(n / 1e6).toFixed(2)}M`;
}

/** Seconds → `"1m05s"` / `"42s"` / `"1.2s"`. */
export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 9.95) return `${s.toFixed(1)}s`;
  // whole seconds first, so 119.7 s is 2m00s, never 1m60s
  const r = Math.round(s);
  if (r < 60) return `${r}s`;
  const m = Math.floor(r / 60);
  if (m < 60) return `${m}m${String(r % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}
