/**
 * A file written under a temporary name beside its target and renamed into
 * place when whole, so a killed writer never leaves a half-written target.
 *
 * The temporary file is `.NAME.tmp-PID-TIME`. Its writer holds an exclusive
 * advisory lock (flock) on it for as long as it is open; the kernel drops the
 * lock when the process ends, however it ends (SIGKILL included). A temporary
 * file is stale, and removed by the next writer of the same target, when its
 * lock can be taken and either its PID is not running or it was last written
 * over a minute ago (a reused PID). A live writer is never removed: it holds
 * the lock from the moment after it creates the file, and in that moment its
 * PID is running and its file is fresh.
 */
import { basename, dirname, join } from "node:path";

/** How long an unlocked temp file of a running PID is taken to be a live writer's not yet locked file. */
const FRESH_MS = 60_000;

/** The prefix of `target`'s temporary files. */
export function tempPrefix(target: string): string {
  return `.${basename(target)}.tmp-`;
}

/** A locked temporary file beside `target`; `commit` renames it into place, `discard` removes it. */
export class TempFile {
  private constructor(readonly target: string, readonly path: string, readonly file: Deno.FsFile) {}

  /** Removes `target`'s stale temporary files, then creates and locks a new one. Throws the file system's error. */
  static create(target: string): TempFile {
    removeStaleTemps(dirname(target), tempPrefix(target));
    const path = join(dirname(target), `${tempPrefix(target)}${Deno.pid}-${Date.now()}`);
    const file = Deno.openSync(path, { write: true, createNew: true });
    try {
      if (!file.tryLockSync(true)) throw new Error(`cannot lock a new file: ${path}`);
    } catch (err) {
      file.close();
      Deno.removeSync(path);
      throw err;
    }
    return new TempFile(target, path, file);
  }

  /** Writes all of `bytes`. */
  writeAllSync(bytes: Uint8Array): void {
    for (let at = 0; at < bytes.length;) at += this.file.writeSync(bytes.subarray(at));
  }

  /** Flushes to disk, closes (dropping the lock) and renames the file over the target. */
  commit(sync = true): void {
    if (sync) this.file.syncSync();
    this.close();
    Deno.renameSync(this.path, this.target);
  }

  /** Closes and removes the file (ignoring a file already gone). */
  discard(): void {
    this.close();
    try {
      Deno.removeSync(this.path);
    } catch {
      // already gone
    }
  }

  private close(): void {
    try {
      this.file.close();
    } catch {
      // already closed
    }
  }
}

/** Removes the files `PREFIX*` in `dir` whose writer is gone (see the module comment). */
export function removeStaleTemps(dir: string, prefix: string): void {
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(dir)];
  } catch {
    return; // an unreadable directory fails the write itself, with its own message
  }
  for (const e of entries) {
    if (!e.isFile || !e.name.startsWith(prefix)) continue;
    const path = join(dir, e.name);
    const pid = Number(e.name.slice(prefix.length).split(/\D/)[0]);
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(path, { read: true });
    } catch {
      continue; // removed meanwhile, or not ours to read
    }
    try {
      if (!file.tryLockSync(true)) continue; // a live writer holds it
      const fresh = Date.now() - (file.statSync().mtime?.getTime() ?? 0) < FRESH_MS;
      if (running(pid) && fresh) continue; // a writer between creating and locking it
      Deno.removeSync(path);
    } catch {
      // gone meanwhile, or not ours to remove
    } finally {
      file.close();
    }
  }
}

/** Whether process `pid` is running (Linux: /proc/PID exists; elsewhere assumed). */
function running(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === Deno.pid) return true;
  if (Deno.build.os !== "linux") return true;
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}
