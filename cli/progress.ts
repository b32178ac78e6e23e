/** A status line on stderr, redrawn in place on a terminal, silent elsewhere unless `plainEvery` is set. */
export class StatusLine {
  #last = 0;
  #lastPlain = 0;
  #shown = false;
  readonly #tty: boolean;
  readonly #encoder = new TextEncoder();

  constructor(
    opts: { enabled?: boolean; isTerminal?: boolean; plainEvery?: number } = {},
    readonly write: (s: string) => void = (s) => Deno.stderr.writeSync(this.#encoder.encode(s)),
  ) {
    this.#tty = (opts.enabled ?? true) && (opts.isTerminal ?? Deno.stderr.isTerminal());
    this.plainEvery = (opts.enabled ?? true) ? opts.plainEvery ?? 0 : 0;
  }

  readonly plainEvery: number;

  /** Shows `text` (throttled to 10 redraws a second on a terminal; every `plainEvery` ms as plain lines otherwise). */
  update(text: string | (() => string), force = false): void {
    const now = performance.now();
    if (this.#tty) {
      if (!force && now - this.#last < 100) return;
      this.#last = now;
      const line = typeof text === "function" ? text() : text;
      const width = terminalWidth();
      this.write(`\r\x1b[2K${line.length > width ? line.slice(0, width - 1) : line}`);
      this.#shown = true;
    } else if (this.plainEvery > 0 && (force || now - this.#lastPlain >= this.plainEvery)) {
      this.#lastPlain = now;
      this.write(`${typeof text === "function" ? text() : text}\n`);
    }
  }

  /** Removes the line from a terminal. */
  clear(): void {
    if (this.#tty && this.#shown) this.write("\r\x1b[2K");
    this.#shown = false;
  }
}

function terminalWidth(): number {
  try {
    return Deno.consoleSize().columns || 80;
  } catch {
    return 80;
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
  if (s < 10) return `${s.toFixed(1)}s`;
  if (s < 60) return `${Math.round(s)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.round(s - 60 * m)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}
