/**
 * Saved states kept automatically (`--cache`) under the cache directory, one
 * file per (input content, model, tokenizer, options), with a size limit:
 * the least recently used go first.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { TomeError } from "../errors.ts";
import { openSource } from "../input/source.ts";
import { cacheRoot } from "../model/cache.ts";
import { readStateHeader, type StateHeader } from "./file.ts";

/** Default size limit of the state cache (`TOME_STATE_CACHE_MAX` overrides, in bytes). */
export const DEFAULT_STATE_CACHE_MAX = 4 * 2 ** 30;

/** Where cached states live. */
export function stateCacheDir(): string {
  return join(cacheRoot(), "states");
}

/** SHA-256 of an input's text as tome reads it (a file, or a directory's files with their headers). */
export async function inputDigest(path: string): Promise<string> {
  const source = await openSource(path);
  const h = createHash("sha256");
  for await (const text of source.text) h.update(text);
  return h.digest("hex");
}

/** The cache file for a key made of everything that decides a state. */
export function statePath(parts: Record<string, unknown>): string {
  const key = createHash("sha256").update(JSON.stringify(parts)).digest("hex").slice(0, 32);
  return join(stateCacheDir(), `${key}.tstate`);
}

/** One cached state. */
export interface CachedState {
  path: string;
  key: string;
  bytes: number;
  /** Last use (modification time; a reuse touches the file). */
  used: Date;
  header: StateHeader | null;
}

/** The cached states, most recently used first (a file whose header does not read has `header: null`). */
export async function listStates(): Promise<CachedState[]> {
  const out: CachedState[] = [];
  try {
    for await (const e of Deno.readDir(stateCacheDir())) {
      if (!e.isFile || !e.name.endsWith(".tstate")) continue;
      const path = join(stateCacheDir(), e.name);
      const st = await Deno.stat(path);
      const header = await readStateHeader(path).catch(() => null);
      out.push({
        path,
        key: e.name.slice(0, -".tstate".length),
        bytes: st.size,
        used: st.mtime ?? new Date(0),
        header,
      });
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return out.sort((a, b) => b.used.getTime() - a.used.getTime());
}

/** Marks a cached state as just used. */
export async function touchState(path: string): Promise<void> {
  const now = new Date();
  await Deno.utime(path, now, now).catch(() => {});
}

/** Removes cached states beyond `maxBytes` in all, least recently used first; returns what was removed. */
export async function gcStates(maxBytes = stateCacheMax()): Promise<CachedState[]> {
  const all = await listStates();
  const removed: CachedState[] = [];
  let total = 0;
  for (const s of all) {
    total += s.bytes;
    if (total > maxBytes || s.header === null) {
      await Deno.remove(s.path).catch(() => {});
      removed.push(s);
    }
  }
  return removed;
}

/** Removes one cached state by key (or key prefix); returns its path. */
export async function removeState(key: string): Promise<string> {
  const hits = (await listStates()).filter((s) => s.key.startsWith(key));
  if (hits.length !== 1) {
    throw new TomeError("usage", `${hits.length === 0 ? "no" : "more than one"} cached state matches "${key}"`);
  }
  await Deno.remove(hits[0].path);
  return hits[0].path;
}

/** The state cache's size limit in bytes. */
export function stateCacheMax(): number {
  const v = Deno.env.get("TOME_STATE_CACHE_MAX");
  const n = v === undefined ? DEFAULT_STATE_CACHE_MAX : Number(v);
  if (!Number.isFinite(n) || n < 0) throw new TomeError("usage", `TOME_STATE_CACHE_MAX must be bytes, got ${v}`);
  return n;
}
