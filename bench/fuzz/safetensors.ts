/**
 * Mutation fuzzer of tome's safetensors header reader.
 *
 *   deno run -A bench/fuzz/safetensors.ts [--cases 10000] [--seed 1] [--timeout 5000] [--out bench/results/fuzz]
 *
 * Starts from a small valid file (F32, F16 and BF16 tensors, a scalar, an
 * empty tensor, metadata) and applies one to three mutations: bit flips,
 * truncation, a wrong length prefix, appended bytes, and JSON-level edits of
 * the header (wrong types, negative, fractional and huge numbers, overlapping
 * and out-of-file ranges, null entries, odd names). The checker below restates
 * the format's rules independently (BigInt arithmetic, pairwise overlap test).
 */
import { fuzzMain, type FuzzTarget, type Outcome } from "./harness.ts";

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };
const MAX_HEADER = 100 * 1024 * 1024;

type Entry = { dtype: unknown; shape: unknown; data_offsets: unknown; [k: string]: unknown };

/** The valid seed: header object and data length. */
function seedHeader(): { header: Record<string, unknown>; dataLength: number } {
  const tensors: [string, string, number[]][] = [
    ["model.embed_tokens.weight", "BF16", [8, 4]],
    ["model.norm.weight", "F32", [4]],
    ["a.half", "F16", [2, 3]],
    ["scalar", "F32", []],
    ["empty", "F32", [0, 5]],
    ["lm_head.weight", "F32", [3, 4]],
  ];
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let at = 0;
  for (const [name, dtype, shape] of tensors) {
    const n = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    header[name] = { dtype, shape, data_offsets: [at, at + n] };
    at += n;
  }
  return { header, dataLength: at };
}

/** A safetensors file of `header` followed by `dataLength` bytes of data. */
function encode(header: unknown, dataLength: number, next: () => number, lengthDelta = 0): Uint8Array {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(Math.max(0, json.length + lengthDelta)), true);
  out.set(json, 8);
  for (let i = 8 + json.length; i < out.length; i++) out[i] = (next() * 256) | 0;
  return out;
}

const pick = <T>(next: () => number, xs: readonly T[]): T => xs[Math.floor(next() * xs.length)];

const WEIRD_NUMBERS = [-1, -8, 0.5, 1.5, 2 ** 31, 2 ** 32 + 4, 2 ** 53, 2 ** 53 + 2, 1e300, -0, 1e21, 2 ** 40];
const WEIRD_VALUES: unknown[] = [null, true, "4", "", [], {}, [1], { a: 1 }, ...WEIRD_NUMBERS];

/** Sets an own property, `__proto__` included (as JSON.parse would make it). */
function setOwn(o: object, key: string, value: unknown): void {
  Object.defineProperty(o, key, { value, enumerable: true, writable: true, configurable: true });
}

/** One JSON-level mutation of the header (in place, or a replacement returned). */
function mutateHeader(h: Record<string, unknown>, next: () => number, dataLength: number): unknown {
  const names = Object.keys(h).filter((k) => k !== "__metadata__");
  const name = pick(next, names.length ? names : ["x"]);
  const current = h[name];
  const e = (current && typeof current === "object" && !Array.isArray(current) ? current : {}) as Entry;
  const r = next();
  const small = () => Math.floor(next() * (dataLength + 16));
  switch (Math.floor(r * 17)) {
    case 0:
      e.dtype = pick(next, ["F32", "F16", "BF16", "I8", "F64", "U8", "f32", "", null, 4, ["F32"]]);
      break;
    case 1: { // a weird shape element, or a weird shape
      if (Array.isArray(e.shape) && e.shape.length && next() < 0.7) {
        e.shape[Math.floor(next() * e.shape.length)] = pick(next, WEIRD_VALUES);
      } else e.shape = pick(next, [null, "8,4", 32, {}, [], [0], [1, 1, 1, 1, 1, 1, 1, 1, 1], [2 ** 26, 2 ** 26]]);
      break;
    }
    case 2: // a dimension grown, shrunk or moved (range no longer matches)
      if (Array.isArray(e.shape)) {
        const i = Math.floor(next() * (e.shape.length + 1));
        if (next() < 0.5) e.shape.splice(i, 0, pick(next, [1, 2, 3]));
        else if (e.shape.length) e.shape[i % e.shape.length] = (e.shape[i % e.shape.length] as number) * 2;
      }
      break;
    case 3: { // an offset replaced by a weird value
      if (Array.isArray(e.data_offsets)) e.data_offsets[next() < 0.5 ? 0 : 1] = pick(next, WEIRD_VALUES);
      break;
    }
    case 4: { // offsets shifted (overlap or out of the data section)
      if (Array.isArray(e.data_offsets)) {
        const d = Math.floor((next() - 0.5) * 40);
        e.data_offsets = e.data_offsets.map((x) => typeof x === "number" ? x + d : x);
      }
      break;
    }
    case 5: // offsets made another tensor's (overlap)
      e.data_offsets = ((h[pick(next, names)] ?? {}) as Entry).data_offsets;
      break;
    case 6:
      e.data_offsets = pick(next, [null, [], [0], [0, 4, 8], "0,4", [4, 0], [small(), small()], { 0: 0, 1: 4 }]);
      break;
    case 7: // a whole entry replaced
      h[name] = pick(next, [null, 1, "F32", [], [1, 2], {}, true]);
      break;
    case 8: // a field deleted
      delete (e as Record<string, unknown>)[pick(next, ["dtype", "shape", "data_offsets"])];
      break;
    case 9: // metadata broken
      h.__metadata__ = pick(next, [null, 1, "pt", [], { format: 1 }, { format: null }, { a: { b: "c" } }, {}]);
      break;
    case 10: // the whole header replaced
      return pick(next, [null, [], 1, "x", true, [{ dtype: "F32" }], "", " ", "{", "{}", "[]"]);
    case 11: // a new entry, valid or not
      setOwn(h, pick(next, ["new", "", "__proto__", "constructor", "toString", "x\ny", "\u0000", "a".repeat(300)]), {
        dtype: pick(next, ["F32", "BF16"]),
        shape: [Math.floor(next() * 4)],
        data_offsets: [dataLength - 8 + Math.floor(next() * 4) * 4, dataLength + Math.floor(next() * 3) * 4 - 8],
      });
      break;
    case 12: // an extra field
      setOwn(e, pick(next, ["extra", "__proto__", "dtype2"]), pick(next, WEIRD_VALUES));
      break;
    case 13: // a tensor renamed to __metadata__
      h.__metadata__ = e;
      break;
    case 14: // a zero-size tensor placed inside another's range
      h["zero"] = { dtype: "F32", shape: [0], data_offsets: [2, 2] };
      break;
    case 15: { // the same element count from negative or fractional dimensions
      if (Array.isArray(e.shape) && e.shape.length === 2 && typeof e.shape[0] === "number") {
        const [a, b] = e.shape as number[];
        e.shape = pick(next, [[-a, -b], [a * 2, b / 2], [a * b * 2, 0.5], [a * b, 1, 1.0], [-1, -a * b]]);
      }
      break;
    }
    default: // a consistent, valid edit: a tensor reshaped with the same element count
      if (Array.isArray(e.shape) && e.shape.length === 2 && typeof e.shape[0] === "number") {
        const [a, b] = e.shape as number[];
        if (a % 2 === 0) e.shape = [a / 2, b * 2];
      }
  }
  return h;
}

/** The `i`-th case: the seed with one to three mutations. */
export function mutate(next: () => number, _i: number): Uint8Array {
  const { header, dataLength } = seedHeader();
  let h: unknown = header;
  let extraData = 0;
  let lengthDelta = 0;
  const steps = 1 + Math.floor(next() * 3);
  let bytes: Uint8Array | null = null;
  for (let s = 0; s < steps; s++) {
    const r = next();
    if (r < 0.55 && bytes === null) {
      h = typeof h === "object" && h !== null && !Array.isArray(h)
        ? mutateHeader(h as Record<string, unknown>, next, dataLength)
        : h;
    } else if (r < 0.6 && bytes === null) extraData = pick(next, [-4, -1, 1, 7, 64]);
    else if (r < 0.65 && bytes === null) lengthDelta = pick(next, [-2, -1, 1, 5, 1 << 20]);
    else {
      bytes ??= encode(h, Math.max(0, dataLength + extraData), next, lengthDelta);
      const kind = next();
      if (kind < 0.45) { // bit flips, mostly in the header
        const n = 1 + Math.floor(next() * 4);
        for (let k = 0; k < n; k++) {
          const at = Math.floor(next() * Math.min(bytes.length, next() < 0.8 ? bytes.length - 0 : 8));
          bytes[at] ^= 1 << Math.floor(next() * 8);
        }
      } else if (kind < 0.7) bytes = bytes.slice(0, Math.floor(next() * bytes.length)); // truncated
      else if (kind < 0.85) { // a huge or odd length prefix
        const v = pick(next, [0n, 1n, 2n, 1n << 63n, (1n << 64n) - 1n, 100n * 1024n * 1024n + 1n, 1n << 40n]);
        if (bytes.length >= 8) new DataView(bytes.buffer, bytes.byteOffset).setBigUint64(0, v, true);
      } else { // a byte inserted into the header
        const at = Math.min(bytes.length, 8 + Math.floor(next() * Math.max(1, bytes.length - 8)));
        const grown: Uint8Array = new Uint8Array(bytes.length + 1);
        grown.set(bytes.subarray(0, at));
        grown[at] = pick(next, [0x7b, 0x7d, 0x22, 0x2c, 0x00, 0xff, 0x5c]);
        grown.set(bytes.subarray(at), at + 1);
        bytes = grown;
      }
    }
  }
  return bytes ?? encode(h, Math.max(0, dataLength + extraData), next, lengthDelta);
}

interface Expected {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

/** The independent checker: the tensors a valid file holds, or why it is invalid. */
export function check(file: Uint8Array): Expected[] | string {
  if (file.length < 8) return "shorter than the length prefix";
  const n = new DataView(file.buffer, file.byteOffset).getBigUint64(0, true);
  if (n < 2n || n > BigInt(MAX_HEADER) || 8n + n > BigInt(file.length)) return `header length ${n} out of range`;
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(file.subarray(8, 8 + Number(n))));
  } catch {
    return "header is not UTF-8 JSON";
  }
  const isObj = (x: unknown): x is Record<string, unknown> => !!x && typeof x === "object" && !Array.isArray(x);
  if (!isObj(header)) return "header is not an object";
  const dataSize = BigInt(file.length) - 8n - n;
  const out: Expected[] = [];
  for (const name of Object.keys(header)) {
    const v = header[name];
    if (name === "__metadata__") {
      if (!isObj(v)) return "metadata not an object";
      for (const x of Object.values(v)) if (typeof x !== "string") return "metadata value not a string";
      continue;
    }
    if (!isObj(v)) return `${name}: not an object`;
    const size = typeof v.dtype === "string" && Object.hasOwn(DTYPE_BYTES, v.dtype) ? DTYPE_BYTES[v.dtype] : 0;
    if (!size) return `${name}: dtype`;
    const nat = (x: unknown) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
    if (!Array.isArray(v.shape) || !v.shape.every(nat)) return `${name}: shape`;
    const o = v.data_offsets;
    if (!Array.isArray(o) || o.length !== 2 || !nat(o[0]) || !nat(o[1])) return `${name}: offsets`;
    const [b, e] = [BigInt(o[0]), BigInt(o[1])];
    if (b > e || e > dataSize) return `${name}: range outside the data`;
    const want = (v.shape as number[]).reduce((a: bigint, x: number) => a * BigInt(x), BigInt(size));
    if (e - b !== want) return `${name}: range size`;
    out.push({ name, dtype: v.dtype as string, shape: v.shape as number[], begin: o[0], end: o[1] });
  }
  for (let i = 0; i < out.length; i++) {
    for (let j = i + 1; j < out.length; j++) {
      if (Math.max(out[i].begin, out[j].begin) < Math.min(out[i].end, out[j].end)) return "ranges overlap";
    }
  }
  const base = 8 + Number(n);
  return out.map((t) => ({ ...t, begin: base + t.begin, end: base + t.end }));
}

/** The safetensors fuzz target. */
export const safetensorsTarget: FuzzTarget = {
  name: "safetensors",
  kind: "modelInvalid",
  mutate,
  judge(input: Uint8Array, outcome: Outcome): string | null {
    const want = check(input);
    if (!outcome.accepted) return typeof want === "string" ? null : "rejected-valid";
    if (typeof want === "string") return `accepted an invalid file (${want})`;
    const got = outcome.result as (Expected & { values: number })[];
    if (got.length !== want.length) return `read ${got.length} tensors, the checker ${want.length}`;
    const byName = new Map(want.map((t) => [t.name, t]));
    for (const t of got) {
      const w = byName.get(t.name);
      if (!w) return `read a tensor the checker does not know: ${t.name}`;
      if (t.dtype !== w.dtype || t.shape.join() !== w.shape.join() || t.begin !== w.begin || t.end !== w.end) {
        return `tensor ${t.name} read as ${JSON.stringify(t)}, the checker says ${JSON.stringify(w)}`;
      }
      if (t.values !== w.shape.reduce((a, b) => a * b, 1)) return `tensor ${t.name}: ${t.values} values read`;
    }
    return null;
  },
};

if (import.meta.main) {
  const s = await fuzzMain(safetensorsTarget, Deno.args);
  if (s.failures > 0) Deno.exit(1);
}
