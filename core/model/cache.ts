import { join, resolve } from "node:path";
import { fsError } from "../errors.ts";
import type { Checkpoint } from "./checkpoint.ts";
import { buildDecoder, type GraphOptions, OPSETS } from "./onnx/decoder.ts";
import { Graph } from "./onnx/graph.ts";

/** Bumped whenever the graph the builder emits changes, so cached graphs are rebuilt. */
export const GRAPH_VERSION = 3;

/** tome's cache directory: `$TOME_CACHE`, else `$XDG_CACHE_HOME/tome`, else `~/.cache/tome`. */
export function cacheRoot(): string {
  const env = (k: string) => Deno.env.get(k) || undefined;
  const explicit = env("TOME_CACHE");
  if (explicit) return resolve(explicit);
  const xdg = env("XDG_CACHE_HOME") ?? join(env("HOME") ?? env("USERPROFILE") ?? ".", ".cache");
  return resolve(xdg, "tome");
}

/** The cache key of a graph: the checkpoint's identity (where, which files, how big, when written, its config) and the options. */
export async function graphKey(ckpt: Checkpoint, opts: GraphOptions): Promise<string> {
  const config = await Deno.readTextFile(join(ckpt.dir, "config.json"));
  const extra = opts.retainingHeads ? await fileIdentity(opts.retainingHeads) : null;
  const identity = JSON.stringify({
    version: GRAPH_VERSION,
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

/** The directory a checkpoint's graph with these options is cached in, and whether it exists. */
export async function findGraph(ckpt: Checkpoint, opts: GraphOptions): Promise<{ dir: string; exists: boolean }> {
  const dir = join(cacheRoot(), "graphs", await graphKey(ckpt, opts));
  const exists = await Deno.stat(join(dir, "model.onnx")).then(() => true, () => false);
  return { dir, exists };
}

/**
 * Returns the cached graph for a checkpoint and options, building it first when
 * absent. A build happens in a temporary directory renamed into place, so an
 * interrupted build never leaves a partial graph behind.
 */
export async function graphFor(ckpt: Checkpoint, opts: GraphOptions): Promise<CachedGraph> {
  const { dir, exists } = await findGraph(ckpt, opts);
  const path = join(dir, "model.onnx");
  if (exists) return { dir, path, built: false, seconds: 0 };
  const started = performance.now();
  const parent = join(cacheRoot(), "graphs");
  try {
    await Deno.mkdir(parent, { recursive: true });
  } catch (err) {
    throw fsError(err, parent, "cache directory");
  }
  const tmp = await Deno.makeTempDir({ dir: parent, prefix: ".building-" });
  try {
    await buildGraph(ckpt, opts, tmp);
    await Deno.writeTextFile(
      join(tmp, "build.json"),
      JSON.stringify({ checkpoint: ckpt.dir, options: opts, version: GRAPH_VERSION }, null, 2) + "\n",
    );
    try {
      await Deno.rename(tmp, dir);
    } catch (err) {
      // another process finished the same build first: use theirs
      if (!(await Deno.stat(path).then(() => true, () => false))) throw err;
      await Deno.remove(tmp, { recursive: true });
    }
  } catch (err) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw err;
  }
  return { dir, path, built: true, seconds: (performance.now() - started) / 1000 };
}

/** Builds the decoder graph of a checkpoint into `dir` (model.onnx + model.onnx.data). */
export async function buildGraph(ckpt: Checkpoint, opts: GraphOptions, dir: string): Promise<void> {
  const data = await Deno.open(join(dir, "model.onnx.data"), { write: true, create: true, truncate: true });
  try {
    const g = new Graph({ file: data, location: "model.onnx.data", threshold: 1024 });
    await buildDecoder(g, ckpt, opts);
    await Deno.writeFile(join(dir, "model.onnx"), g.encode(OPSETS, `tome decoder for ${ckpt.dir}`));
  } finally {
    data.close();
  }
}
