/**
 * Mutation fuzzer of saved-state files (`core/state/format.ts`).
 *
 *   deno run -A bench/fuzz/state.ts [--cases 10000] [--seed 1] [--timeout 5000] [--out bench/results/fuzz]
 *
 * Starts from two states `saveState` wrote on a tiny model (float16 and
 * float32 KV), mutates header fields (entry counts, dimensions, dtype, payload
 * size and checksum, odd JSON values, deletions), the frame (magic, version,
 * header length) and bytes (flips, truncation, appended bytes, payload flips).
 * The checker below restates the file format and its rules; a state it finds
 * valid must be read, with every array the size the header implies.
 */
import { createHash } from "node:crypto";
import { fuzzMain, type FuzzTarget, type Outcome } from "./harness.ts";
import { makeStateSeeds } from "./state_seed.ts";

const MAGIC = "TOMESTATE";
const pick = <T>(next: () => number, xs: readonly T[]): T => xs[Math.floor(next() * xs.length)];
const enc = new TextEncoder();

/** A state file split into its frame and header (the checker's own reading). */
function split(bytes: Uint8Array): { header: unknown; len: number; rest: Uint8Array } | string {
  if (bytes.length < MAGIC.length + 5) return "short";
  if (new TextDecoder().decode(bytes.subarray(0, MAGIC.length)) !== MAGIC) return "magic";
  if (bytes[MAGIC.length] !== 1) return "version";
  const len = bytes[10] | (bytes[11] << 8) | (bytes[12] << 16) | (bytes[13] * 2 ** 24);
  if (14 + len > bytes.length || len > 16 << 20) return "header length";
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(14, 14 + len)));
  } catch {
    return "json";
  }
  return { header, len, rest: bytes.subarray(14 + len) };
}

function frame(header: unknown, payload: Uint8Array): Uint8Array {
  const json = enc.encode(JSON.stringify(header));
  const out = new Uint8Array(14 + json.length + payload.length);
  out.set(enc.encode(MAGIC));
  out[9] = 1;
  new DataView(out.buffer).setUint32(10, json.length, true);
  out.set(json, 14);
  out.set(payload, 14 + json.length);
  return out;
}

const ODD: unknown[] = [-1, 0, 1, 0.5, 2 ** 31, 2 ** 53, 1e308, "1", "", null, true, [], {}, [1], "float16", "float32"];
const FIELDS = [
  "version",
  "model",
  "model.layers",
  "model.kvHeads",
  "model.headDim",
  "model.digest",
  "tokenizer",
  "tokenizer.digest",
  "run",
  "run.kvDtype",
  "run.positions",
  "run.budget",
  "run.questionPatch",
  "run.decodeBudget",
  "recipe",
  "questions",
  "queryAgnostic",
  "prefix",
  "position",
  "lengths",
  "lengths.N",
  "lengths.N.N",
  "meter",
  "meter.*",
  "input",
  "input.bytes",
  "payload",
  "payload.bytes",
  "payload.sha256",
];

function mutateHeader(h: Record<string, unknown>, next: () => number): void {
  const path = pick(next, FIELDS).split(".");
  let obj: unknown = h;
  for (let i = 0; i < path.length - 1; i++) {
    const o = obj as Record<string, unknown>;
    if (!o || typeof o !== "object") return;
    const key = path[i] === "N" && Array.isArray(o) ? Math.floor(next() * o.length) : path[i];
    obj = o[key as string];
  }
  if (!obj || typeof obj !== "object") return;
  const o = obj as Record<string | number, unknown>;
  let key: string | number = path[path.length - 1];
  if (key === "N" && Array.isArray(o)) key = Math.floor(next() * o.length);
  if (key === "*") key = pick(next, Object.keys(o).length ? Object.keys(o) : ["x"]);
  const v = o[key];
  const r = next();
  if (r < 0.12) delete o[key];
  else if (r < 0.5 && typeof v === "number") o[key] = pick(next, [v + 1, v - 1, v * 2, Math.floor(v / 2), -v, v + 0.5]);
  else if (r < 0.6 && Array.isArray(v)) {
    if (next() < 0.5) v.pop();
    else v.push(structuredClone(v[0] ?? 0));
  } else if (r < 0.65 && key === "kvDtype") o[key] = v === "float16" ? "float32" : "float16";
  else o[key] = structuredClone(pick(next, ODD));
}

/** The `i`-th case: a seed state, its header mutated and/or its bytes. */
export function makeMutator(seeds: Uint8Array[]): (next: () => number, i: number) => Uint8Array {
  return (next) => {
    const seed = pick(next, seeds);
    const parts = split(seed) as { header: Record<string, unknown>; rest: Uint8Array };
    let bytes: Uint8Array;
    const r = next();
    if (r < 0.08) bytes = seed.slice();
    else if (r < 0.75) {
      const h = structuredClone(parts.header);
      for (let s = 0; s < 1 + Math.floor(next() * 2); s++) mutateHeader(h, next);
      bytes = frame(h, parts.rest);
    } else bytes = seed.slice();
    if (r >= 0.75 || next() < 0.15) {
      const kind = next();
      if (kind < 0.3) {
        // a flip in the frame, header or payload
        const at = next() < 0.5 ? Math.floor(next() * Math.min(bytes.length, 64)) : Math.floor(next() * bytes.length);
        bytes[at] ^= 1 << Math.floor(next() * 8);
      } else if (kind < 0.5) bytes = bytes.slice(0, Math.floor(next() * bytes.length));
      else if (kind < 0.6) {
        const more = new Uint8Array(bytes.length + 1 + Math.floor(next() * 64));
        more.set(bytes);
        bytes = more;
      } else if (kind < 0.8) {
        // the header length says more or less than it is
        const dv = new DataView(bytes.buffer, bytes.byteOffset);
        if (bytes.length >= 14) {
          dv.setUint32(
            10,
            pick(next, [0, 1, dv.getUint32(10, true) + 1, dv.getUint32(10, true) - 1, 2 ** 32 - 1]),
            true,
          );
        }
      } else if (bytes.length >= 10) bytes[9] = pick(next, [0, 2, 255]);
    }
    return bytes;
  };
}

const isInt = (v: unknown, max = Number.MAX_SAFE_INTEGER) =>
  typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= max;
const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === "object" && !Array.isArray(v);
const isStr = (v: unknown) => typeof v === "string";

/** What the checker expects of a valid state: each layer's six array lengths, and whether KV is float32. */
interface Expected {
  layers: number[][];
  f32: boolean;
}

/** The independent checker: the format restated, including the payload's SHA-256. */
export function check(bytes: Uint8Array): Expected | string {
  const s = split(bytes);
  if (typeof s === "string") return s;
  const h = s.header;
  if (!isObj(h) || h.version !== 1) return "header";
  const { model: m, run: r, tokenizer: t, meter, input, payload: p } = h;
  if (!isObj(m) || !isStr(m.digest) || !isStr(m.arch)) return "model";
  if (!isInt(m.layers, 4096) || !isInt(m.kvHeads, 4096) || !isInt(m.headDim, 4096)) return "dims";
  if (!isObj(t) || !isStr(t.digest)) return "tokenizer";
  if (!isObj(r) || !isStr(r.policy) || !isInt(r.budget) || !isInt(r.chunk) || !isInt(r.window)) return "run";
  if (r.positions !== "original" && r.positions !== "compact") return "positions";
  if (r.kvDtype !== "float16" && r.kvDtype !== "float32") return "dtype";
  if (typeof r.questionPatch !== "boolean" || !(r.decodeBudget === null || isInt(r.decodeBudget))) return "flags";
  if (!isStr(h.recipe) || !Array.isArray(h.questions) || !h.questions.every(isStr)) return "questions";
  if (typeof h.queryAgnostic !== "boolean") return "agnostic";
  if (!Array.isArray(h.prefix) || !h.prefix.every((x) => isInt(x, 2 ** 31 - 1))) return "prefix";
  if (!isInt(h.position)) return "position";
  const L = h.lengths;
  if (!Array.isArray(L) || L.length !== m.layers) return "lengths";
  if (!L.every((l) => Array.isArray(l) && l.length === m.kvHeads && l.every((n) => isInt(n, 2 ** 31 - 1)))) {
    return "lengths";
  }
  if (!isObj(meter) || !Object.values(meter).every((v) => typeof v === "number" && Number.isFinite(v))) return "meter";
  if (!isObj(input) || !isInt(input.bytes) || !isInt(input.files)) return "input";
  if (!isObj(p) || !isInt(p.bytes) || !isStr(p.sha256)) return "payload";
  const el = r.kvDtype === "float32" ? 4 : 2;
  const d = m.headDim as number;
  const counts = (L as number[][]).map((l) => l.reduce((a, b) => a + b, 0));
  const need = counts.reduce((a, n) => a + n * (2 * d * el + 16), 0);
  if (need !== p.bytes || s.rest.length !== need) return "payload size";
  if (createHash("sha256").update(s.rest).digest("hex") !== p.sha256) return "checksum";
  return { layers: counts.map((n) => [n * d, n * d, n, n, n, n]), f32: r.kvDtype === "float32" };
}

/** The saved-state fuzz target (its seeds made by {@link makeStateSeeds}). */
export async function stateTarget(): Promise<FuzzTarget> {
  const seeds = await makeStateSeeds();
  return {
    name: "state",
    kind: "stateInvalid",
    mutate: makeMutator(seeds),
    judge(input: Uint8Array, outcome: Outcome): string | null {
      const want = check(input);
      if (!outcome.accepted) return typeof want === "string" ? null : "rejected-valid";
      if (typeof want === "string") return `accepted an invalid state (${want})`;
      const got = outcome.result as { layers: number[][]; f32: boolean[] };
      if (JSON.stringify(got.layers) !== JSON.stringify(want.layers)) {
        return `arrays ${JSON.stringify(got.layers)}, the header implies ${JSON.stringify(want.layers)}`;
      }
      if (got.f32.some((f) => f !== want.f32)) return "KV arrays of the wrong type";
      return null;
    },
  };
}

if (import.meta.main) {
  const s = await fuzzMain(await stateTarget(), Deno.args);
  if (s.failures > 0) Deno.exit(1);
}
