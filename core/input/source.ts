import { fsError, TomeError } from "../errors.ts";
import { looksBinary, sniff } from "./binary.ts";
import { type DecodeCounts, decodeUtf8, decodeUtf8Whole } from "./utf8.ts";
import { type Skipped, walk, type WalkedFile } from "./walk.ts";

/** What reading an input has counted so far; final once its text stream has ended. */
export interface InputStats extends DecodeCounts {
  /** Text files read (1 for a file or stdin). */
  files: number;
  /** Entries of a directory that were left out, with the reason. */
  skipped: Skipped[];
}

/** An opened input: its text as a stream of UTF-8 segments, read once. */
export interface Source {
  /** The path as given, or `"stdin"`. */
  label: string;
  kind: "file" | "stdin" | "directory";
  /** Bytes expected in all, when known in advance (not for stdin or pipes). */
  totalBytes: number | null;
  stats: InputStats;
  text: ReadableStream<string>;
}

/** The line that introduces each file of a directory, so paths stay visible to the model. */
export function fileHeader(rel: string): string {
  return `==> ${rel} <==\n`;
}

/**
 * Opens a path, `-` for standard input, or a directory (every text file under
 * it, `.gitignore` honoured, each introduced by {@link fileHeader}). Nothing is
 * read whole into memory: the text arrives as a stream of segments.
 *
 * Throws {@link TomeError} for a missing or unreadable path, a binary file, an
 * empty input; a directory with no text file fails when its stream ends.
 */
export async function openSource(
  spec: string,
  opts: { stdin?: ReadableStream<Uint8Array>; stdinIsTerminal?: boolean } = {},
): Promise<Source> {
  const stats: InputStats = { bytes: 0, replacedChars: 0, files: 0, skipped: [] };
  if (spec === "-") {
    const terminal = opts.stdinIsTerminal ?? (opts.stdin ? false : Deno.stdin.isTerminal());
    if (terminal) {
      throw new TomeError("usage", "no input: standard input is a terminal (pipe a file in, or give a path)");
    }
    const bytes = await textBytes(opts.stdin ?? Deno.stdin.readable, "stdin");
    stats.files = 1;
    return { label: "stdin", kind: "stdin", totalBytes: null, stats, text: bytes.pipeThrough(decodeUtf8(stats)) };
  }
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(spec);
  } catch (err) {
    throw fsError(err, spec);
  }
  if (info.isDirectory) return await openDirectory(spec, stats);
  if (info.isFile && info.size === 0) throw new TomeError("empty", `input is empty: ${spec}`);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(spec, { read: true });
  } catch (err) {
    throw fsError(err, spec);
  }
  const bytes = await textBytes(file.readable, spec);
  stats.files = 1;
  return {
    label: spec,
    kind: "file",
    totalBytes: info.isFile ? info.size : null,
    stats,
    text: bytes.pipeThrough(decodeUtf8(stats)),
  };
}

/** Checks that a byte stream is non-empty text, and gives it back whole. */
async function textBytes(stream: ReadableStream<Uint8Array>, label: string): Promise<ReadableStream<Uint8Array>> {
  let head: Uint8Array;
  let whole: ReadableStream<Uint8Array>;
  try {
    ({ head, stream: whole } = await sniff(stream));
  } catch (err) {
    throw fsError(err, label);
  }
  if (head.length === 0) throw new TomeError("empty", `input is empty: ${label}`);
  if (looksBinary(head)) {
    await whole.cancel();
    throw new TomeError("binary", `input looks binary (it has NUL bytes), not text: ${label}`);
  }
  return whole;
}

async function openDirectory(root: string, stats: InputStats): Promise<Source> {
  let files: WalkedFile[];
  try {
    files = await walk(root, stats.skipped);
  } catch (err) {
    throw fsError(err, root);
  }
  await requireTextFile(root, files, stats.skipped);
  const totalBytes = files.reduce((n, f) => n + f.size, 0);
  return {
    label: root,
    kind: "directory",
    totalBytes,
    stats,
    text: ReadableStream.from(directoryText(root, files, stats)),
  };
}

async function* directoryText(root: string, files: WalkedFile[], stats: InputStats): AsyncGenerator<string> {
  let endsWithNewline = true;
  // small files' text, gathered into segments of about SMALL_FILE characters
  let pending = "";
  for (const f of files) {
    if (f.size <= SMALL_FILE) {
      // a small file is read whole in one call (a stream per file costs more than its bytes)
      const whole = readSmall(f.path);
      if (whole === null) {
        stats.skipped.push({ rel: f.rel, reason: "unreadable" });
        continue;
      }
      if (whole !== "large") {
        if (looksBinary(whole)) {
          stats.skipped.push({ rel: f.rel, reason: "binary" });
          continue;
        }
        stats.files++;
        const text = decodeUtf8Whole(whole, stats);
        pending += (endsWithNewline ? (stats.files > 1 ? "\n" : "") : "\n\n") + fileHeader(f.rel) + text;
        endsWithNewline = text.length > 0 ? text.endsWith("\n") : true;
        if (pending.length >= SMALL_FILE) {
          yield pending;
          pending = "";
        }
        continue;
      }
    }
    if (pending) {
      yield pending;
      pending = "";
    }
    let head: Uint8Array;
    let bytes: ReadableStream<Uint8Array>;
    try {
      const file = await Deno.open(f.path, { read: true });
      ({ head, stream: bytes } = await sniff(file.readable));
    } catch {
      stats.skipped.push({ rel: f.rel, reason: "unreadable" });
      continue;
    }
    if (looksBinary(head)) {
      await bytes.cancel();
      stats.skipped.push({ rel: f.rel, reason: "binary" });
      continue;
    }
    stats.files++;
    yield (endsWithNewline ? (stats.files > 1 ? "\n" : "") : "\n\n") + fileHeader(f.rel);
    endsWithNewline = true;
    for await (const segment of bytes.pipeThrough(decodeUtf8(stats))) {
      yield segment;
      endsWithNewline = segment.endsWith("\n");
    }
  }
  if (pending) yield pending;
  if (stats.files === 0) {
    const why = stats.skipped.length > 0
      ? ` (${stats.skipped.length} skipped: ${summarizeSkipped(stats.skipped)})`
      : files.length === 0
      ? " (it is empty or everything is ignored)"
      : "";
    throw new TomeError("noTextFiles", `directory has no readable text files: ${root}${why}`);
  }
}

/** Files up to this size (at walk time) are read whole rather than streamed. */
const SMALL_FILE = 64 * 1024;

const smallBuffer = new Uint8Array(SMALL_FILE + 1);

/**
 * Reads a file of at most {@link SMALL_FILE} bytes whole: a copy of its bytes,
 * `"large"` when it has grown past that since the walk (then it is streamed),
 * or null when it cannot be read.
 */
function readSmall(path: string): Uint8Array | "large" | null {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch {
    return null;
  }
  try {
    let n = 0;
    while (n < smallBuffer.length) {
      const r = file.readSync(smallBuffer.subarray(n));
      if (r === null) return smallBuffer.slice(0, n);
      n += r;
    }
    return "large";
  } catch {
    return null;
  } finally {
    file.close();
  }
}

/**
 * Fails fast (before any model work) when no file of a directory is text: the
 * files' first bytes are sniffed until one looks like text.
 */
async function requireTextFile(root: string, files: WalkedFile[], walkSkipped: Skipped[]): Promise<void> {
  const skipped: Skipped[] = [...walkSkipped];
  for (const f of files) {
    try {
      using file = await Deno.open(f.path, { read: true });
      const head = new Uint8Array(8000);
      const n = (await file.read(head)) ?? 0;
      if (!looksBinary(head.subarray(0, n))) return;
      skipped.push({ rel: f.rel, reason: "binary" });
    } catch {
      skipped.push({ rel: f.rel, reason: "unreadable" });
    }
  }
  const why = skipped.length > 0
    ? ` (${skipped.length} skipped: ${summarizeSkipped(skipped)})`
    : " (it is empty or everything is ignored)";
  throw new TomeError("noTextFiles", `directory has no readable text files: ${root}${why}`);
}

function summarizeSkipped(skipped: Skipped[]): string {
  const counts = new Map<string, number>();
  for (const s of skipped) counts.set(s.reason, (counts.get(s.reason) ?? 0) + 1);
  return [...counts].map(([reason, n]) => `${n} ${reason}`).join(", ");
}
