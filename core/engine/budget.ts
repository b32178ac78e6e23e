import { TomeError } from "../errors.ts";
import { kvBytesPerToken, type ModelConfig } from "../model/config.ts";

const UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
};

/** Bytes in a size such as `2GiB`, `500MB` or `4096` (bytes); a usage error naming `what` otherwise. */
export function parseSize(spec: string, what: string): number {
  const m = spec.trim().match(/^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/);
  const scale = m ? UNITS[(m[2] || "b").toLowerCase()] : undefined;
  if (!m || scale === undefined) {
    throw new TomeError("usage", `${what} "${spec}" is not a size like 2GiB (B, KB, MB, GB, KiB, MiB, GiB)`);
  }
  return Math.floor(Number(m[1]) * scale);
}

/**
 * A KV budget as entries per layer and KV head: `4096` (entries), or a size
 * such as `256MiB` / `1.5GB`, converted with the model's KV bytes per token at
 * the cache's element size.
 */
export function parseBudget(spec: string | number, config: ModelConfig, bytesPerElement: number): number {
  if (typeof spec === "number") return positive(spec, String(spec));
  const m = spec.trim().match(/^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/);
  if (!m) throw new TomeError("usage", `budget "${spec}" is not a number of entries or a size like 256MiB`);
  const unit = m[2].toLowerCase();
  if (unit === "") return positive(Number(m[1]), spec);
  const scale = UNITS[unit];
  if (!scale) throw new TomeError("usage", `budget "${spec}": unknown unit "${m[2]}" (B, KB, MB, GB, KiB, MiB, GiB)`);
  return positive(Math.floor((Number(m[1]) * scale) / kvBytesPerToken(config, bytesPerElement)), spec);
}

function positive(n: number, spec: string): number {
  if (!Number.isInteger(n) || n < 1) {
    throw new TomeError("usage", `budget "${spec}" gives ${n} entries; it must hold at least one entry per layer`);
  }
  return n;
}
