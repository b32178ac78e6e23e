/**
 * Text to build haystacks from: a file given, else the shared corpus beside
 * the checkout, else the project's own documentation and sources, shuffled by
 * paragraph and repeated (without the paragraphs that mention needles' pass
 * codes) — so evaluation and the demo work with nothing but the project.
 */
import { join } from "node:path";
import { uniform } from "../../kernels/random.ts";
import { fsError } from "../errors.ts";

const ROOT = join(import.meta.dirname ?? ".", "..", "..");
export const SHARED_CORPUS = join(ROOT, "..", "shared", "corpus", "war_and_peace.txt");

/** The project's own text (README, design notes, sources), paragraphs shuffled with `seed`, at least `chars` long. */
export async function projectText(chars = 1_500_000, seed = 0): Promise<string> {
  const parts: string[] = [];
  for (const dir of ["", "core", "cli", "recipes", "kernels"]) {
    const here = join(ROOT, dir);
    const walk = async (d: string): Promise<void> => {
      const entries = [];
      for await (const e of Deno.readDir(d)) entries.push(e);
      entries.sort((a, b) => a.name.localeCompare(b.name));
      for (const e of entries) {
        const p = join(d, e.name);
        if (e.isDirectory && dir !== "") await walk(p);
        else if (e.isFile && /\.(md|ts)$/.test(e.name)) parts.push(await Deno.readTextFile(p));
      }
    };
    await walk(here).catch(() => {});
  }
  // paragraphs that talk about needles would collide with them ("The pass code of …")
  const paragraphs = parts.join("\n\n").split(/\n\s*\n/).map((p) => p.trim())
    .filter((p) => p.length > 20 && !/pass code/i.test(p));
  if (paragraphs.length === 0) throw new Error("no project text found to build a corpus from");
  const r = uniform(seed);
  const out: string[] = [];
  let n = 0;
  while (n < chars) {
    const p = paragraphs[Math.floor(r() * paragraphs.length)];
    out.push(p);
    n += p.length + 2;
  }
  return out.join("\n\n");
}

/** The corpus: `path`, else the shared book when present, else the project's own text. */
export async function loadCorpus(path?: string): Promise<{ text: string; source: string }> {
  if (path) {
    try {
      return { text: await Deno.readTextFile(path), source: path };
    } catch (err) {
      throw fsError(err, path, "corpus");
    }
  }
  try {
    return { text: await Deno.readTextFile(SHARED_CORPUS), source: SHARED_CORPUS };
  } catch {
    return { text: await projectText(), source: "the project's own text" };
  }
}
