import ignore, { type Ignore } from "ignore";
import { join, relative } from "node:path";

/** A file found under a directory, in walk order. */
export interface WalkedFile {
  /** Absolute (or as-given) path to open. */
  path: string;
  /** Path relative to the walked root, with `/` separators. */
  rel: string;
  size: number;
}

/** Why something under the directory was left out. */
export interface Skipped {
  rel: string;
  reason: "binary" | "unreadable" | "symlink loop" | "not a regular file";
}

/** Directory names never descended into. */
const ALWAYS_SKIPPED = new Set([".git", ".hg", ".svn"]);

interface IgnoreScope {
  /** Directory (relative to root, "" for root) the rules are relative to. */
  base: string;
  rules: Ignore;
}

/**
 * Lists the files under `root` in a stable order (entries sorted by name,
 * depth-first), honouring every `.gitignore` on the way (each relative to its
 * own directory), following symbolic links but never into a loop or to a file
 * already listed. Unreadable entries are reported in `skipped`, not thrown.
 *
 * Cost: one directory read per directory, one `stat` per file, and a
 * `realPath` only for the root and for symbolic links — the real path of any
 * other entry is its directory's real path joined with its name. The calls
 * are synchronous: 20,000 tiny files take well under a second.
 */
export function walk(root: string, skipped: Skipped[]): Promise<WalkedFile[]> {
  try {
    return Promise.resolve(walkSync(root, skipped));
  } catch (err) {
    return Promise.reject(err);
  }
}

function walkSync(root: string, skipped: Skipped[]): WalkedFile[] {
  const files: WalkedFile[] = [];
  const seenFiles = new Set<string>();
  const rootReal = Deno.realPathSync(root);
  visit(root, rootReal, "", [], new Set([rootReal]));
  return files;

  function visit(dir: string, dirReal: string, rel: string, scopes: IgnoreScope[], ancestors: Set<string>) {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(dir)];
    } catch {
      skipped.push({ rel: rel || ".", reason: "unreadable" });
      return;
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const here = [...scopes];
    if (entries.some((e) => e.name === ".gitignore" && !e.isDirectory)) {
      try {
        const text = Deno.readTextFileSync(join(dir, ".gitignore"));
        here.push({ base: rel, rules: ignore().add(text) });
      } catch {
        skipped.push({ rel: join(rel, ".gitignore"), reason: "unreadable" });
      }
    }
    for (const e of entries) {
      const path = join(dir, e.name);
      const childRel = rel ? `${rel}/${e.name}` : e.name;
      let isDir = e.isDirectory;
      let isFile = e.isFile;
      let real = "";
      if (e.isSymlink) {
        try {
          real = Deno.realPathSync(path);
          const st = Deno.statSync(real);
          isDir = st.isDirectory;
          isFile = st.isFile;
        } catch {
          skipped.push({ rel: childRel, reason: "unreadable" });
          continue;
        }
      } else real = join(dirReal, e.name);
      if (isDir && ALWAYS_SKIPPED.has(e.name)) continue;
      if (here.length > 0 && isIgnored(here, childRel, isDir)) continue;
      if (isDir) {
        if (ancestors.has(real)) {
          skipped.push({ rel: childRel, reason: "symlink loop" });
          continue;
        }
        visit(path, real, childRel, here, new Set([...ancestors, real]));
      } else if (isFile) {
        if (seenFiles.has(real)) continue;
        try {
          const st = Deno.statSync(real);
          seenFiles.add(real);
          files.push({ path, rel: childRel, size: st.size });
        } catch {
          skipped.push({ rel: childRel, reason: "unreadable" });
        }
      } else {
        skipped.push({ rel: childRel, reason: "not a regular file" });
      }
    }
  }
}

/** Git's precedence: the deepest `.gitignore` with a matching rule decides (`!` re-includes). */
function isIgnored(scopes: IgnoreScope[], rel: string, isDir: boolean): boolean {
  let ignored = false;
  for (const s of scopes) {
    const sub = s.base ? relative(s.base, rel) : rel;
    if (sub.startsWith("..")) continue;
    const r = s.rules.test(isDir ? `${sub}/` : sub);
    if (r.ignored) ignored = true;
    else if (r.unignored) ignored = false;
  }
  return ignored;
}
