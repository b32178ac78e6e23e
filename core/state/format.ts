/**
 * The saved-state file: `TOMESTATE` magic, a format version byte, a u32 header
 * length, a JSON header, then the payload — for every layer and KV head its
 * retained entries' keys and values (at the cache dtype), positions,
 * accumulated attention, queries seen and importance. The header names the
 * model, tokenizer, run options and the payload's size and SHA-256. A file is
 * untrusted input: every field is checked before anything is allocated.
 *
 * Version 2 adds what a reading that keeps evicted entries holds beyond its
 * retained K/V (`sections.ts`): MiKV's low tier, thin keys, a merger's state.
 * A state with none of them is written as version 1, and version 1 files load.
 */
import { TomeError } from "../errors.ts";
import { type KvDtype, kvElementBytes } from "../model/config.ts";
import type { MeterSnapshot } from "../meter/meter.ts";
import type { EntryRows } from "../engine/kv_store.ts";
import {
  checkSections,
  decodeSections,
  type Dims,
  keyElements,
  sectionBytes,
  sectionParts,
  type SectionPayload,
  type Sections,
} from "./sections.ts";

export const STATE_MAGIC = "TOMESTATE";
/** The newest format version this tome writes (a state without low tier, thin keys or merger is written as 1). */
export const STATE_VERSION = 2;
/** The versions this tome reads. */
const READS = [1, 2];
/** Largest header accepted (the prefix tokens and questions live there). */
const MAX_HEADER = 16 << 20;

/** Everything a state's header says. */
export interface StateHeader extends Sections {
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
    /** MiKV's low tier (version 2): the tier, and the entries each head may hold there. */
    keepEvicted?: "int4" | "int2";
    lowBudget?: number;
    /** Thin keys (version 2): key channels kept of the head dimension. */
    keyChannels?: number;
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

/** The dimensions a header's sections are checked against. */
function dimsOf(h: Pick<StateHeader, "lengths" | "model" | "run">): Dims {
  const { layers, kvHeads, headDim } = h.model;
  return { layers, kvHeads, headDim, kvDtype: h.run.kvDtype, lengths: h.lengths };
}

/**
 * Bytes of the payload the header's lengths imply: per entry its value, its key (whole, or thin at the kept
 * channels) and four 4-byte fields, then the sections' parts.
 */
export function payloadBytes(h: Pick<StateHeader, "lengths" | "model" | "run" | keyof Sections>): number {
  const el = kvElementBytes(h.run.kvDtype);
  const dims = dimsOf(h);
  let n = 0;
  h.lengths.forEach((layer, l) => {
    for (const len of layer) n += len * (h.model.headDim * el + 4 * 4);
    n += keyElements(dims, h.thin, l) * el;
  });
  return n + sectionBytes(h, dims);
}

/** The payload's pieces, in file order: the layers' entries, then the sections' parts. */
export function payloadParts(layers: StateLayer[], sections: SectionPayload = {}): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const l of layers) {
    for (const a of [l.keys, l.values, l.positions, l.accumulated, l.seen, l.importance]) {
      out.push(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    }
  }
  return [...out, ...sectionParts(sections)];
}

/** The bytes before the payload: magic, version, header length, header. */
export function encodeHead(header: StateHeader): Uint8Array {
  const head = new TextEncoder().encode(JSON.stringify(header));
  const m = STATE_MAGIC.length;
  const out = new Uint8Array(m + 5 + head.length);
  out.set(new TextEncoder().encode(STATE_MAGIC));
  out[m] = header.version;
  new DataView(out.buffer).setUint32(m + 1, head.length, true);
  out.set(head, m + 5);
  return out;
}

/** Reads and checks the header of a state file's first bytes; `size` is the file's size. */
export function decodeHeader(bytes: Uint8Array, size: number, where: string): { header: StateHeader; start: number } {
  const bad = (what: string) => new TomeError("stateInvalid", `${where}: not a valid tome state (${what})`);
  const m = STATE_MAGIC.length;
  if (size < m + 5 || new TextDecoder().decode(bytes.subarray(0, m)) !== STATE_MAGIC) throw bad("no TOMESTATE magic");
  if (!READS.includes(bytes[m])) {
    throw new TomeError(
      "stateInvalid",
      `${where}: state format version ${bytes[m]}, this tome reads ${READS.join(" and ")}`,
    );
  }
  const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(m + 1, true);
  if (len > MAX_HEADER || m + 5 + len > size || m + 5 + len > bytes.length) throw bad("header length");
  let h: unknown;
  try {
    h = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(m + 5, m + 5 + len)));
  } catch {
    throw bad("header is not JSON");
  }
  checkHeader(h, bytes[m], bad);
  const header = h as StateHeader;
  if (payloadBytes(header) !== header.payload.bytes) throw bad("payload size does not match the entries");
  if (m + 5 + len + header.payload.bytes !== size) throw bad(`file is ${size} bytes, the header says otherwise`);
  return { header, start: m + 5 + len };
}

/** Splits a checked payload into layers (views onto copies aligned for typed arrays). */
export function decodePayload(header: StateHeader, payload: Uint8Array): StateLayer[] {
  return decodeState(header, payload, "state").layers;
}

/**
 * Splits a checked payload into layers and the sections' parts, checking the sections' values (`where` names the
 * file in errors).
 */
export function decodeState(
  header: StateHeader,
  payload: Uint8Array,
  where: string,
): { layers: StateLayer[]; sections: SectionPayload } {
  const d = header.model.headDim;
  const f32 = header.run.kvDtype === "float32";
  const dims = dimsOf(header);
  let at = 0;
  const take = (n: number) => {
    const b = payload.slice(at, at + n);
    at += n;
    return b.buffer;
  };
  const layers = header.lengths.map((heads, l) => {
    const n = heads.reduce((a, b) => a + b, 0);
    const el = kvElementBytes(header.run.kvDtype);
    const kv = (elements: number) => f32 ? new Float32Array(take(elements * el)) : new Uint16Array(take(elements * el));
    return {
      keys: kv(keyElements(dims, header.thin, l)),
      values: kv(n * d),
      positions: new Int32Array(take(n * 4)),
      accumulated: new Float32Array(take(n * 4)),
      seen: new Float32Array(take(n * 4)),
      importance: new Float32Array(take(n * 4)),
    };
  });
  const bad = (what: string) => new TomeError("stateInvalid", `${where}: not a valid tome state (${what})`);
  return { layers, sections: decodeSections(header, dims, take, bad) };
}

const isInt = (v: unknown, max = Number.MAX_SAFE_INTEGER): v is number =>
  typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= max;
const isStr = (v: unknown): v is string => typeof v === "string";
const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === "object" && !Array.isArray(v);

function checkHeader(h: unknown, version: number, bad: (what: string) => Error): void {
  if (!isObj(h)) throw bad("header is not an object");
  const need = (ok: boolean, what: string) => {
    if (!ok) throw bad(what);
  };
  const { model, tokenizer, run, meter, input, payload } = h;
  need(h.version === version, "version");
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
  need(r.keepEvicted === undefined || r.keepEvicted === "int4" || r.keepEvicted === "int2", "keep-evicted tier");
  need(r.lowBudget === undefined || isInt(r.lowBudget, 2 ** 31 - 1), "low budget");
  need(r.keyChannels === undefined || isInt(r.keyChannels, 4096), "key channels");
  if (version === 1) {
    need(h.low === undefined && h.thin === undefined && h.merger === undefined, "version 1 holds only K/V");
  }
  const { layers, kvHeads, headDim } = m as { layers: number; kvHeads: number; headDim: number };
  const dims = { layers, kvHeads, headDim, kvDtype: r.kvDtype as KvDtype, lengths: h.lengths as number[][] };
  checkSections(h, dims, bad);
  const low = h.low as Sections["low"], thin = h.thin as Sections["thin"];
  need((low === undefined) === (r.keepEvicted === undefined), "low tier without its run option, or the reverse");
  need(!low || (r.keepEvicted === `int${low.bits}` && r.lowBudget === low.budget), "low tier and run options");
  need((thin === undefined) === (r.keyChannels === undefined), "thin keys without their run option, or the reverse");
  need(!thin || (r.keyChannels === thin.channels && r.window === thin.window), "thin keys and run options");
  const merger = h.merger as Sections["merger"];
  need(!merger || r.merge === merger.name, "merger state of another merge method");
}
