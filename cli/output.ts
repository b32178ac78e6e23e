import { TomeError } from "../core/errors.ts";

const encoder = new TextEncoder();

/** Thrown when stdout's reader has gone away (e.g. `tome … | head`): the run ends quietly. */
export class StdoutClosed extends Error {}

/**
 * Writes all of `text` to stdout; a closed pipe becomes {@link StdoutClosed},
 * any other failure (`/dev/full`, a full disk) a `TomeError` of kind `output` (exit 13).
 */
export async function writeStdout(text: string): Promise<void> {
  const bytes = encoder.encode(text);
  try {
    for (let at = 0; at < bytes.length;) at += await Deno.stdout.write(bytes.subarray(at));
  } catch (err) {
    if (err instanceof Deno.errors.BrokenPipe) throw new StdoutClosed();
    const msg = err instanceof Error ? err.message : String(err);
    throw new TomeError("output", `cannot write to standard output: ${msg.replace(/ \(os error \d+\)$/, "")}`);
  }
}

/** One line on stderr, prefixed with `tome:`. */
export function note(message: string): void {
  console.error(`tome: ${message}`);
}

/** A usage error (exit code 2). */
export function usage(message: string): TomeError {
  return new TomeError("usage", message);
}

/** Rounds to `digits` decimals, for JSON output. */
export function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
