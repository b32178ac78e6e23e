/**
 * The graph cache: each checkpoint's decoder graph, built once per set of
 * graph options and kept under `cacheRoot()/graphs/<key>/`.
 *
 * - The key hashes the checkpoint's identity, its config, the options and the
 *   digest of what the builder emits (`graph_digest.ts`), so a changed builder
 *   never reuses an old graph.
 * - Each entry has a manifest (sizes and SHA-256 of its files,
 *   `cache_manifest.ts`) checked on every use; a damaged entry is removed and
 *   rebuilt with one line on stderr.
 * - A build writes into a locked `.building-*` directory renamed into place
 *   (`lock.ts`); abandoned ones are removed at the next use of the cache, and
 *   two processes building the same graph both succeed with one entry.
 */
import { join, resolve } from "node:path";
import { fsError, TomeError } from "../errors.ts";
import { checkManifest, writeManifest } from "./cache_manifest.ts";
import { collectGarbage } from "./gc.ts";
import type { Checkpoint } from "./checkpoint.ts";
import { buildGraph } from "./graph_build.ts";
import { builderDigest } from "./graph_digest.ts";
import { createBuildDir, removeStaleBuilds, removeStrayLock, REMOVING_PREFIX } from "./lock.ts";
import type { GraphOptions } from "./onnx/decoder.ts";

/** tome's cache directory: `$TOME_CACHE`, else `$XDG_CACHE_HOME/tome`, else `~/.cache/tome`. */
export function cacheRoot(): string {
  const env = (k: string) => Deno.env.get(k) || undefined;
  const explicit = env("TOME_CACHE");
  if (explicit) return resolve(explicit);
  const xdg = env("XDG_CACHE_HOME") ?? join(env("HOME") ?? env("USERPROFILE") ?? ".", ".cache");
  return resolve(xdg, "tome");
}

/** The directory holding every cached graph. */
export function graphsDir(): string {
  return join(cacheRoot(), "graphs");
}

/**
 * The cache key of a graph: the checkpoint's identity (where, which files, how
 * big, when written, its config), the options, and the builder's digest for
 * them. `scratch` is an existing writable directory for the builder probe.
 */
export async function graphKey(ckpt: Checkpoint, opts: GraphOptions, scratch: string): Promise<string> {
  const config = ckpt.identity ?? await Deno.readTextFile(join(ckpt.dir, "config.json"));
  const extra = opts.retainingHeads ? await fileIdentity(opts.retainingHeads) : null;
  const identity = JSON.stringify({
    builder: await builderDigest(ckpt, opts, scratch),
    dir: await Deno.realPath(ckpt.dir),
    files: ckpt.files,
    config,
    opts,
    extra,
  });
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(identity));
  return [...new Uint8Array(digest).slice(0, 12)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function fileIdentity(path: string) {
  try {
    const st = await Deno.stat(path);
    return { path: await Deno.realPath(path), size: st.size, mtime: st.mtime?.getTime() ?? 0 };
  } catch (err) {
    throw fsError(err, path, "retaining heads file");
  }
}

/** Where a cached graph lives. */
export interface CachedGraph {
  dir: string;
  /** The `model.onnx` file (weights beside it in `model.onnx.data`). */
  path: string;
  /** False when it was found in the cache, true when built now. */
  built: boolean;
  /** Seconds spent building (0 when cached). */
  seconds: number;
}

/**
 * The directory a checkpoint's graph with these options is cached in, and
 * whether a whole entry is there. Writes nothing to the cache when it is
 * missing or not writable (the builder probe then runs in a temporary directory).
 */
export async function findGraph(ckpt: Checkpoint, opts: GraphOptions): Promise<{ dir: string; exists: boolean }> {
  const parent = graphsDir();
  const usable = await Deno.stat(parent).then((s) => s.isDirectory, () => false);
  const scratch = usable ? parent : await Deno.makeTempDir({ prefix: "tome-probe-" });
  try {
    const key = await graphKey(ckpt, opts, scratch).catch(async (err) => {
      if (!usable || err instanceof TomeError) throw err;
      // the cache is there but not writable: probe elsewhere
      const tmp = await Deno.makeTempDir({ prefix: "tome-probe-" });
      try {
        return await graphKey(ckpt, opts, tmp);
      } finally {
        await Deno.remove(tmp, { recursive: true }).catch(() => {});
      }
    });
    const dir = join(parent, key);
    return { dir, exists: (await entryProblem(dir, key)) === null };
  } finally {
    if (!usable) await Deno.remove(scratch, { recursive: true }).catch(() => {});
  }
}

/** Options of {@link graphFor}. */
export interface GraphForOptions {
  /** Receives the one-line notice about a damaged entry (default: stderr). */
  onNotice?: (line: string) => void;
}

/**
 * Returns the cached graph for a checkpoint and options, building it first when
 * absent or damaged. Removes abandoned builds of dead processes first.
 *
 * Throws TomeError `output` when the cache cannot be written, `cacheDamaged`
 * when a damaged entry cannot be rebuilt.
 */
export async function graphFor(
  ckpt: Checkpoint,
  opts: GraphOptions,
  options: GraphForOptions = {},
): Promise<CachedGraph> {
  const parent = graphsDir();
  try {
    await Deno.mkdir(parent, { recursive: true });
  } catch (err) {
    throw writeError(err, parent);
  }
  await removeStaleBuilds(parent);
  const key = await graphKey(ckpt, opts, parent).catch((err) => {
    throw writeError(err, parent);
  });
  const dir = join(parent, key);
  const path = join(dir, "model.onnx");
  const problem = await entryProblem(dir, key);
  if (problem === null) return { dir, path, built: false, seconds: 0 };
  if (problem === ABSENT) return { dir, path, built: true, seconds: await build(ckpt, opts, key, dir) };

  (options.onNotice ?? ((line) => console.error(line)))(
    `tome: graph cache entry ${dir} was damaged (${problem}); rebuilding`,
  );
  try {
    await removeEntry(dir, parent);
    return { dir, path, built: true, seconds: await build(ckpt, opts, key, dir) };
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new TomeError(
      "cacheDamaged",
      `graph cache entry ${dir} was damaged (${problem}) and rebuilding it failed: ${why}`,
    );
  }
}

const ABSENT = "absent";

/** null when the entry is whole, ABSENT when there is none, else what is wrong with it. */
async function entryProblem(dir: string, key: string): Promise<string | null> {
  const st = await Deno.lstat(dir).catch(() => null);
  if (!st) return ABSENT;
  if (!st.isDirectory) return "not a directory";
  const problem = await checkManifest(dir, key);
  if (problem === null) await removeStrayLock(dir);
  return problem;
}

/** Builds into a locked temporary directory and renames it into place; returns the seconds it took. */
async function build(ckpt: Checkpoint, opts: GraphOptions, key: string, dir: string): Promise<number> {
  const started = performance.now();
  const parent = join(dir, "..");
  const tmp = await createBuildDir(parent).catch((err) => {
    throw writeError(err, parent);
  });
  try {
    await buildGraph(ckpt, opts, tmp.path);
    await Deno.writeTextFile(
      join(tmp.path, "build.json"),
      JSON.stringify({ checkpoint: ckpt.dir, options: opts, key }, null, 2) + "\n",
    );
    await writeManifest(tmp.path, key);
    if (!(await tmp.commit(dir))) {
      // another process finished the same build first: use theirs when it is whole
      const theirs = await entryProblem(dir, key);
      if (theirs !== null) throw new Error(`another process's entry is ${theirs}`);
      await tmp.discard();
    }
  } catch (err) {
    await tmp.discard();
    throw writeError(err, tmp.path);
  } finally {
    // the build's weights are garbage now: collect them before a session loads the graph
    collectGarbage();
  }
  return (performance.now() - started) / 1000;
}

/** Moves a damaged entry aside, then deletes it (a `.removing-*` left by a kill is removed by the next run). */
async function removeEntry(dir: string, parent: string): Promise<void> {
  const aside = join(parent, `${REMOVING_PREFIX}${crypto.randomUUID()}`);
  try {
    await Deno.rename(dir, aside);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return; // removed by another process
    throw err;
  }
  // best effort: a concurrent cleaner may be deleting it too, and a leftover goes at the next run
  await Deno.remove(aside, { recursive: true }).catch(() => {});
}

/** An operating-system error while writing the cache → TomeError `output`; anything else unchanged. */
function writeError(err: unknown, path: string): unknown {
  if (err instanceof TomeError) return err;
  const code = (err as { code?: unknown })?.code;
  if (
    err instanceof Deno.errors.PermissionDenied || err instanceof Deno.errors.NotCapable || typeof code === "string"
  ) {
    const reason = (err as Error).message.replace(/ \(os error \d+\).*$/s, "");
    return new TomeError("output", `cannot write the graph cache (${reason}): ${path}`);
  }
  return err;
}
