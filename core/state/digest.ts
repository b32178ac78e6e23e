/**
 * Identities a saved state is checked against: the model (its config and a
 * sample of every weight file's bytes: the first, middle and last MiB, and
 * the size) and the tokenizer (its files' bytes).
 */
import { isAbsolute, join } from "node:path";
import type { Checkpoint } from "../model/checkpoint.ts";

/** Bytes sampled from each weight file at its start, middle and end. */
const SAMPLE = 1 << 20;

/** Hex SHA-256 of the concatenated parts. */
export async function sha256Hex(...parts: (Uint8Array | string)[]): Promise<string> {
  const enc = new TextEncoder();
  const bytes = parts.map((p) => (typeof p === "string" ? enc.encode(p) : p));
  const all = new Uint8Array(bytes.reduce((a, b) => a + b.length, 0));
  let at = 0;
  for (const b of bytes) {
    all.set(b, at);
    at += b.length;
  }
  const d = await crypto.subtle.digest("SHA-256", all);
  return [...new Uint8Array(d)].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/** The model's identity: its config and a sampled digest of each weight file (cheap on multi-GB files). */
export async function modelDigest(ckpt: Checkpoint): Promise<string> {
  const parts: (Uint8Array | string)[] = [JSON.stringify(ckpt.config)];
  for (const f of ckpt.files) {
    parts.push(`${f.name}:${f.size}`);
    const path = isAbsolute(f.name) ? f.name : join(ckpt.dir, f.name);
    const file = await Deno.open(path).catch(() => null);
    if (!file) continue;
    try {
      for (const offset of [0, Math.max(0, Math.floor(f.size / 2) - SAMPLE / 2), Math.max(0, f.size - SAMPLE)]) {
        const buf = new Uint8Array(Math.min(SAMPLE, f.size));
        await file.seek(offset, Deno.SeekMode.Start);
        let n = 0;
        while (n < buf.length) {
          const r = await file.read(buf.subarray(n));
          if (r === null) break;
          n += r;
        }
        parts.push(buf.subarray(0, n));
      }
    } finally {
      file.close();
    }
  }
  return sha256Hex(...parts);
}

/** The tokenizer's identity: `tokenizer.json` and `tokenizer_config.json` as they are on disk. */
export async function tokenizerDigest(dir: string): Promise<string> {
  const read = (name: string) => Deno.readFile(join(dir, name)).catch(() => new Uint8Array(0));
  return sha256Hex(await read("tokenizer.json"), "\u0000", await read("tokenizer_config.json"));
}
