/**
 * The manifest of a cached graph: the size and SHA-256 of each of its files,
 * written when the graph is built and checked whenever it is used.
 *
 * The check costs a `stat` per file and a digest of `model.onnx` (small: the
 * graph and its tiny constants). The weights file (`model.onnx.data`, ~1.4 GB
 * at the 360M shape) is digested in full only when its file-system identity
 * (inode, size, modification and change time) differs from the one recorded
 * when it was last digested — any write to the file changes its change time,
 * which no tool can set back. Deno reports the change time in whole seconds,
 * so an identity recorded within the second of the file's last change is
 * "racy" (as in git's index) and the next check digests again. Measured on
 * the 360M shape's 1.45 GB weights file with node:crypto SHA-256: 1.2 s on an
 * idle core, 3.7 s on 2 shared cores; the check without it: 3–7 ms.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";

/** The name of the manifest file in a cached graph's directory. */
export const MANIFEST = "manifest.json";
/** The files a cached graph consists of (besides the manifest and `build.json`). */
export const GRAPH_FILES = ["model.onnx", "model.onnx.data"] as const;
/** Files checked by digest on every use; the others when their identity changed. */
const ALWAYS_DIGESTED = new Set(["model.onnx"]);

/** One file's record. */
export interface FileRecord {
  size: number;
  sha256: string;
  /** Device, inode, size, mtime and ctime when last digested: unchanged means unwritten since… */
  identity: string;
  /** …provided the ctime's second had ended by this time (ms), when the identity was taken. */
  checkedAt: number;
}

/** The manifest: the cache key it was built for, and its files. */
export interface Manifest {
  format: 1;
  key: string;
  files: Record<string, FileRecord>;
}

/** SHA-256 of a file, streamed. */
export async function fileDigest(path: string): Promise<string> {
  const h = createHash("sha256");
  using file = await Deno.open(path, { read: true });
  const buf = new Uint8Array(4 << 20);
  while (true) {
    const n = await file.read(buf);
    if (n === null) break;
    h.update(buf.subarray(0, n));
  }
  return h.digest("hex");
}

function identityOf(st: Deno.FileInfo): string {
  return [st.dev, st.ino, st.size, st.mtime?.getTime() ?? 0, st.ctime?.getTime() ?? 0].join(":");
}

/** True when a write after `checkedAt` could have left the identity as it was (same ctime second). */
function racy(st: Deno.FileInfo, checkedAt: number): boolean {
  const ctime = st.ctime?.getTime();
  return ctime === undefined || !(ctime + 1000 <= checkedAt);
}

/** Digests the graph files in `dir` (a build directory no other process writes to) and writes the manifest there. */
export async function writeManifest(dir: string, key: string): Promise<Manifest> {
  const files: Record<string, FileRecord> = {};
  for (const name of GRAPH_FILES) {
    const path = join(dir, name);
    const st = await Deno.stat(path);
    const sha256 = await fileDigest(path);
    // nothing else writes to a build directory, so the identity holds until now (after a long digest,
    // often past the second of the last write: the next use is then cheap)
    files[name] = { size: st.size, sha256, identity: identityOf(st), checkedAt: Date.now() };
  }
  const manifest: Manifest = { format: 1, key, files };
  await Deno.writeTextFile(join(dir, MANIFEST), JSON.stringify(manifest, null, 2) + "\n");
  return manifest;
}

/**
 * Checks a cached graph against its manifest. Returns null when it is whole,
 * else what is wrong, in a few words. Records the identity of a file whose
 * identity changed but whose digest still matches (best effort), so the next
 * check is cheap again.
 */
export async function checkManifest(dir: string, key: string): Promise<string | null> {
  let manifest: Manifest;
  try {
    manifest = JSON.parse(await Deno.readTextFile(join(dir, MANIFEST)));
  } catch (err) {
    return err instanceof Deno.errors.NotFound ? "no manifest" : "unreadable manifest";
  }
  if (manifest?.format !== 1 || manifest.key !== key || typeof manifest.files !== "object" || !manifest.files) {
    return "invalid manifest";
  }
  let changed = false;
  for (const name of GRAPH_FILES) {
    const rec = manifest.files[name];
    if (!rec || typeof rec.size !== "number" || typeof rec.sha256 !== "string") return "invalid manifest";
    const path = join(dir, name);
    const checkedAt = Date.now();
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(path);
    } catch {
      return `${name} missing`;
    }
    if (!st.isFile) return `${name} is not a file`;
    if (st.size !== rec.size) return `${name} has ${st.size} bytes, expected ${rec.size}`;
    const id = identityOf(st);
    const stale = id !== rec.identity || racy(st, rec.checkedAt);
    if (!ALWAYS_DIGESTED.has(name) && !stale) continue;
    let digest: string;
    try {
      digest = await fileDigest(path);
    } catch {
      return `${name} unreadable`;
    }
    if (digest !== rec.sha256) return `${name} content changed`;
    if (stale && !racy(st, checkedAt)) {
      rec.identity = id;
      rec.checkedAt = checkedAt;
      changed = true;
    }
  }
  if (changed) await rewrite(dir, manifest);
  return null;
}

/** Replaces the manifest atomically; a failure (read-only cache) only costs a digest next time. */
async function rewrite(dir: string, manifest: Manifest): Promise<void> {
  const tmp = join(dir, `${MANIFEST}.${Deno.pid}.tmp`);
  try {
    // an earlier rewrite killed before its rename left its temporary file
    for await (const e of Deno.readDir(dir)) {
      if (e.name.startsWith(`${MANIFEST}.`) && e.name.endsWith(".tmp")) await Deno.remove(join(dir, e.name));
    }
    await Deno.writeTextFile(tmp, JSON.stringify(manifest, null, 2) + "\n");
    await Deno.rename(tmp, join(dir, MANIFEST));
  } catch {
    await Deno.remove(tmp).catch(() => {});
  }
}
