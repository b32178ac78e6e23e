/**
 * The saved-state file: `TOMESTATE` magic, a format version byte, a u32 header
 * length, a JSON header, then the payload — for every layer and KV head its
 * retained entries' keys and values (at the cache dtype), positions,
 * accumulated attention, queries seen and importance. The header names the
 * model, tokenizer, run options and the payload's size and SHA-256. A file is
 * untrusted input: every field is checked before anything is allocated.
 */
import { TomeError } from "../errors.ts";
import { type KvDtype, kvElementBytes } from "../model/config.ts";
import type { MeterSnapshot } from "../meter/meter.ts";
import type { EntryRows } from "../engine/kv_store.ts";

export const STATE_MAGIC = "TOMESTATE";
export const STATE_VERSION = 1;
/** Largest header accepted (the prefix tokens and questions live there). */
const MAX_HEADER = 16 << 20;

/** Everything a state's header says. */
export interface StateHeader {
  version: number;
  model: { digest: string; arch: string; layers: number; kvHeads: number; headDim: number };
  tokenizer: { digest: string };
  run: {
    policy: string;
    budget: number;
    chunk: number;
    positions: "original" | "compact";
    kvDtype: KvDtype;
    window: number;
    questionPatch: boolean;
    decodeBudget: number | null;
    /** The merge method evicted entries were folded by (null or absent: dropped). */
    merge?: string | null;
    /** How the graph stored the weights the K/V were computed with (f32, q8, …). */
    weights?: string;
  };
  /** The recipe whose framing the prefix is, and the questions that shaped the read (empty: none). */
  recipe: string;
  questions: string[];
  queryAgnostic: boolean;
  /** Token ids before the document (the recipe's head). */
  prefix: number[];
  /** Tokens fed so far: the next position. */
  position: number;
  /** [layer][head]: retained entries. */
  lengths: number[][];
  meter: MeterSnapshot;
  input: { bytes: number; files: number; sources: string[] };
  created: string;
  payload: { bytes: number; sha256: string };
}

/** One layer's retained entries, heads packed: [Hkv][n_h] rows. */
export type StateLayer = EntryRows;

/** Bytes of the payload the header's lengths imply. */
export function payloadBytes(h: Pick<StateHeader, "lengths" | "model" | "run">): number {
  const el = kvElementBytes(h.run.kvDtype);
  let n = 0;
  for (const layer of h.lengths) for (const len of layer) n += len * (2 * h.model.headDim * el + 4 * 4);
  return n;
}

/** The payload's pieces, in file order. */
export function payloadParts(layers: StateLayer[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const l of layers) {
    for (const a of [l.keys, l.values, l.positions, l.accumulated, l.seen, l.importance]) {
      out.push(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    }
  }
  return out;
}

/** The bytes before the payload: magic, version, header length, header. */
export function encodeHead(header: StateHeader): Uint8Array {
  const head = new TextEncoder().encode(JSON.stringify(header));
  const m = STATE_MAGIC.length;
  const out = new Uint8Array(m + 5 + head.length);
  out.set(new TextEncoder().encode(STATE_MAGIC));
  out[m] = STATE_VERSION;
  new DataView(out.buffer).setUint32(m + 1, head.length, true);
  out.set(head, m + 5);
  return out;
}

/** Reads and checks the header of a state file's first bytes; `size` is the file's size. */
export function decodeHeader(bytes: Uint8Array, size: number, where: string): { header: StateHeader; start: number } {
  const bad = (what: string) => new TomeError("stateInvalid", `${where}: not a valid tome state (${what})`);
  const m = STATE_MAGIC.length;
  if (size < m + 5 || new TextDecoder().decode(bytes.subarray(0, m)) !== STATE_MAGIC) throw bad("no TOMESTATE magic");
  if (bytes[m] !== STATE_VERSION) {
    throw new TomeError("stateInvalid", `${where}: state format version ${bytes[m]}, this tome reads ${STATE_VERSION}`);
  }
  const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(m + 1, true);
  if (len > MAX_HEADER || m + 5 + len > size || m + 5 + len > bytes.length) throw bad("header length");
  let h: unknown;
  try {
    h = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(m + 5, m + 5 + len)));
  } catch {
    throw bad("header is not JSON");
  }
  checkHeader(h, bad);
  const header = h as StateHeader;
  if (payloadBytes(header) !== header.payload.bytes) throw bad("payload size does not match the entries");
  if (m + 5 + len + header.payload.bytes !== size) throw bad(`file is ${size} bytes, the header says otherwise`);
  return { header, start: m + 5 + len };
}

/** Splits a checked payload into layers (views onto copies aligned for typed arrays). */
export function decodePayload(header: StateHeader, payload: Uint8Array): StateLayer[] {
  const d = header.model.headDim;
  const f32 = header.run.kvDtype === "float32";
  let at = 0;
  const take = (n: number) => {
    const b = payload.slice(at, at + n);
    at += n;
    return b.buffer;
  };
  return header.lengths.map((heads) => {
    const n = heads.reduce((a, b) => a + b, 0);
    const el = kvElementBytes(header.run.kvDtype);
    const kv = () => (f32 ? new Float32Array(take(n * d * el)) : new Uint16Array(take(n * d * el)));
    return {
      keys: kv(),
      values: kv(),
      positions: new Int32Array(take(n * 4)),
      accumulated: new Float32Array(take(n * 4)),
      seen: new Float32Array(take(n * 4)),
      importance: new Float32Array(take(n * 4)),
    };
  });
}

const isInt = (v: unknown, max = Number.MAX_SAFE_INTEGER): v is number =>
  typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= max;
const isStr = (v: unknown): v is string => typeof v === "string";
const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === "object" && !Array.isArray(v);

function checkHeader(h: unknown, bad: (what: string) => Error): void {
  if (!isObj(h)) throw bad("header is not an object");
  const need = (ok: boolean, what: string) => {
    if (!ok) throw bad(what);
  };
  const { model, tokenizer, run, meter, input, payload } = h;
  need(h.version === STATE_VERSION, "version");
  need(isObj(model) && isStr(model.digest) && isStr(model.arch), "model");
  const m = model as Record<string, unknown>;
  need(isInt(m.layers, 4096) && isInt(m.kvHeads, 4096) && isInt(m.headDim, 4096), "model dimensions");
  need(isObj(tokenizer) && isStr(tokenizer.digest), "tokenizer");
  need(isObj(run), "run");
  const r = run as Record<string, unknown>;
  need(isStr(r.policy) && isInt(r.budget) && isInt(r.chunk) && isInt(r.window), "run options");
  need(r.positions === "original" || r.positions === "compact", "positions");
  need(r.kvDtype === "float32" || r.kvDtype === "float16", "kv dtype");
  need(typeof r.questionPatch === "boolean" && (r.decodeBudget === null || isInt(r.decodeBudget)), "run flags");
  need(r.merge === undefined || r.merge === null || isStr(r.merge), "merge method");
  need(r.weights === undefined || isStr(r.weights), "weights");
  need(isStr(h.recipe) && Array.isArray(h.questions) && h.questions.every(isStr), "questions");
  need(typeof h.queryAgnostic === "boolean", "query-agnostic flag");
  need(Array.isArray(h.prefix) && h.prefix.every((x) => isInt(x, 2 ** 31 - 1)), "prefix tokens");
  need(isInt(h.position), "position");
  need(
    Array.isArray(h.lengths) && h.lengths.length === m.layers &&
      h.lengths.every((l) => Array.isArray(l) && l.length === m.kvHeads && l.every((n) => isInt(n, 2 ** 31 - 1))),
    "entry counts",
  );
  need(isObj(meter) && Object.values(meter).every((v) => typeof v === "number" && Number.isFinite(v)), "meter");
  need(isObj(input) && isInt(input.bytes) && isInt(input.files), "input");
  need(isObj(payload) && isInt(payload.bytes) && isStr(payload.sha256), "payload");
}
