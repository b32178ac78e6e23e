/**
 * Errors a user can cause, each with its documented exit code.
 *
 * Everything in `core/` throws {@link TomeError} for bad input; `cli/` prints
 * its message as one line on stderr and exits with its code. Any other thrown
 * value is a bug in tome (exit code 1).
 */

/** Exit codes, as documented in README.md ("Exit codes"). */
export const EXIT = {
  ok: 0,
  internal: 1,
  usage: 2,
  notFound: 3,
  unreadable: 4,
  binary: 5,
  empty: 6,
  noTextFiles: 7,
  tokenizerMissing: 8,
  tokenizerInvalid: 9,
  modelInvalid: 10,
  tooLarge: 11,
  device: 12,
  output: 13,
  cacheDamaged: 14,
  stateInvalid: 15,
  interrupted: 130,
  terminated: 143,
} as const;

/** The name of an exit code, e.g. `"notFound"`. */
export type ExitName = keyof typeof EXIT;

/** An error caused by the user's input or environment, with an exit code. */
export class TomeError extends Error {
  readonly code: number;
  constructor(readonly kind: ExitName, message: string) {
    super(message);
    this.name = "TomeError";
    this.code = EXIT[kind];
  }
}

/** Maps a Deno file-system error on `path` to a {@link TomeError}. */
export function fsError(err: unknown, path: string, what = "input"): TomeError {
  if (err instanceof TomeError) return err;
  if (err instanceof Deno.errors.NotFound) {
    return new TomeError("notFound", `${what} not found: ${path}`);
  }
  if (err instanceof Deno.errors.PermissionDenied) {
    return new TomeError("unreadable", `${what} is not readable (permission denied): ${path}`);
  }
  if (err instanceof Deno.errors.IsADirectory) {
    return new TomeError("unreadable", `${what} is a directory, expected a file: ${path}`);
  }
  const msg = err instanceof Error ? err.message : String(err);
  return new TomeError("unreadable", `cannot read ${what} ${path}: ${msg}`);
}
