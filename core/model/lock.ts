/**
 * Build directories that belong to a live process, and the removal of those
 * whose process is gone.
 *
 * A build writes into `.building-<random>` beside its destination. Its owner
 * holds an exclusive advisory lock (flock) on `.building-<random>/lock` for as
 * long as it builds; the kernel drops the lock when the process ends, however it
 * ends (SIGKILL included). Setting a build directory up (making it, creating and
 * locking its `lock`) and looking for abandoned ones both happen under an
 * exclusive lock on the parent's `.lock` (a file that is never deleted), so a
 * cleaner never sees a live build half set up: a `.building-*` directory whose
 * `lock` is missing or can be locked is abandoned, and two processes never
 * remove each other's live builds.
 */
import { join } from "node:path";
import { removeTreeSync } from "../remove_tree.ts";

/** Prefix of a directory a build is writing. */
export const BUILDING_PREFIX = ".building-";
/** Prefix of a directory being deleted (a damaged entry moved aside). */
export const REMOVING_PREFIX = ".removing-";
/** The lock file of a cache directory, held while build directories are set up or cleaned. */
export const SETUP_LOCK = ".lock";

const LOCK = "lock";

/** Runs `fn` holding the exclusive setup lock of `parent`. */
async function underSetupLock<T>(parent: string, fn: () => Promise<T>): Promise<T> {
  const file = await Deno.open(join(parent, SETUP_LOCK), { read: true, write: true, create: true });
  try {
    await file.lock(true);
    return await fn();
  } finally {
    file.close(); // drops the lock
  }
}

/** A build directory owned by this process until it is committed or discarded. */
export interface BuildDir {
  /** The directory to write into. */
  path: string;
  /**
   * Renames the directory to `dest`, then drops the lock. Returns false (and
   * keeps the directory, still locked) when `dest` already exists.
   */
  commit(dest: string): Promise<boolean>;
  /** Removes the directory and drops the lock. */
  discard(): Promise<void>;
}

/** This process's build directories and their locks (null while being set up). */
const own = new Map<string, Deno.FsFile | null>();

/** Creates a locked `.building-*` directory under `parent` (which must exist). */
export async function createBuildDir(parent: string): Promise<BuildDir> {
  const [path, file] = await underSetupLock(parent, async () => {
    // synchronous, so no signal handler can run between making the directory and recording it
    const path = Deno.makeTempDirSync({ dir: parent, prefix: BUILDING_PREFIX });
    own.set(path, null);
    let file: Deno.FsFile | undefined;
    try {
      file = await Deno.open(join(path, LOCK), { read: true, write: true, createNew: true });
      own.set(path, file);
      if (!(await file.tryLock(true))) throw new Error(`cannot lock a new file: ${path}`);
      await file.write(new TextEncoder().encode(`${Deno.pid}\n`));
      return [path, file] as const;
    } catch (err) {
      file?.close();
      own.delete(path);
      await Deno.remove(path, { recursive: true }).catch(() => {});
      throw err;
    }
  });
  own.set(path, file);
  const drop = () => {
    own.get(path)?.close();
    own.delete(path);
  };
  return {
    path,
    async commit(dest) {
      try {
        await Deno.rename(path, dest);
      } catch (err) {
        if (await Deno.lstat(dest).then(() => true, () => false)) return false;
        throw err;
      }
      // the lock came along; a finished entry needs none (a stray one is removed by the next check)
      await Deno.remove(join(dest, LOCK)).catch(() => {});
      drop();
      return true;
    },
    async discard() {
      try {
        await Deno.remove(path, { recursive: true });
      } catch { /* already gone */ }
      drop();
    },
  };
}

/** Removes a stray lock file left in a finished directory by a process killed right after its commit. */
export async function removeStrayLock(dir: string): Promise<void> {
  await Deno.remove(join(dir, LOCK)).catch(() => {});
}

/**
 * Removes this process's unfinished build directories, synchronously: for a
 * SIGINT or SIGTERM handler to call just before it exits.
 *
 * @example
 * Deno.addSignalListener("SIGTERM", () => { removePartialBuilds(); Deno.exit(143); });
 */
export function removePartialBuilds(): void {
  for (const [path, file] of own) {
    removeTreeSync(path);
    try {
      file?.close();
    } catch { /* closed */ }
  }
  own.clear();
}

/** True when the build directory at `path` belongs to a live process (call under the setup lock). */
async function isLiveBuild(path: string): Promise<boolean> {
  if (own.has(path)) return true;
  let file: Deno.FsFile;
  try {
    file = await Deno.open(join(path, LOCK), { read: true });
  } catch {
    return false; // killed while it was being set up
  }
  try {
    if (!(await file.tryLock(true))) return true;
    await file.unlock();
    return false;
  } finally {
    file.close();
  }
}

/**
 * Removes abandoned build directories (`.building-*` whose owner is gone) and
 * half-deleted entries (`.removing-*`) under `parent`. Returns how many it removed.
 * Errors are ignored: cleaning up is best effort and must never fail a run.
 */
export async function removeStaleBuilds(parent: string): Promise<number> {
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(parent));
  } catch {
    return 0;
  }
  const candidates = entries.filter((e) =>
    e.isDirectory && (e.name.startsWith(BUILDING_PREFIX) || e.name.startsWith(REMOVING_PREFIX))
  );
  if (candidates.length === 0) return 0;
  try {
    return await underSetupLock(parent, async () => {
      let removed = 0;
      for (const e of candidates) {
        const path = join(parent, e.name);
        if (e.name.startsWith(BUILDING_PREFIX) && await isLiveBuild(path)) continue;
        try {
          await Deno.remove(path, { recursive: true });
          removed++;
        } catch { /* removed by another process meanwhile */ }
      }
      return removed;
    });
  } catch {
    return 0; // the cache is not writable: nothing can be removed
  }
}
