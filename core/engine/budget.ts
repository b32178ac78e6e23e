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
  return parseEntries(spec, kvBytesPerToken(config, bytesPerElement), "budget", 1);
}

/** A budget as written: a count of entries, or a size in bytes (`256MiB`). */
export type BudgetSpec = { entries: number; bytes?: undefined } | { bytes: number; entries?: undefined };

/** Reads `spec` as a count (`4096`) or a size (`256MiB`, `1.5GB`); a usage error naming `what` when it is neither. */
export function readBudgetSpec(spec: string | number, what: string): BudgetSpec {
  if (typeof spec === "number") return { entries: spec };
  const m = spec.trim().match(/^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/);
  if (!m) throw new TomeError("usage", `${what} "${spec}" is not a number of entries or a size like 256MiB`);
  const unit = m[2].toLowerCase();
  if (unit === "") return { entries: Number(m[1]) };
  const scale = UNITS[unit];
  if (!scale) throw new TomeError("usage", `${what} "${spec}": unknown unit "${m[2]}" (B, KB, MB, GB, KiB, MiB, GiB)`);
  return { bytes: Math.floor(Number(m[1]) * scale) };
}

/**
 * Entries per layer and KV head from `spec`: a count (`4096`), or a size (`256MiB`, `1.5GB`) divided by
 * `bytesPerToken`, the bytes one entry takes in every layer and KV head. A usage error naming `what` when it is
 * neither, or gives fewer than `least` whole entries.
 */
export function parseEntries(spec: string | number, bytesPerToken: number, what: string, least: number): number {
  const s = readBudgetSpec(spec, what);
  return checkEntries(s.bytes === undefined ? s.entries : Math.floor(s.bytes / bytesPerToken), spec, what, least);
}

/** `n` when it is a whole number of entries ≥ `least`; a usage error naming `what` and `spec` otherwise. */
export function checkEntries(n: number, spec: string | number, what: string, least: number): number {
  if (!Number.isInteger(n) || n < least) {
    const need = least > 0 ? "it must hold at least one entry per layer" : "it must be a whole number of entries";
    throw new TomeError("usage", `${what} "${spec}" gives ${n} entries; ${need}`);
  }
  return n;
}
