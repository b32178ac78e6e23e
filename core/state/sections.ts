/**
 * The parts of a saved state beyond the retained K/V (format version 2): MiKV's
 * low tier, thin keys (ThinK) and a merger's state. Each has a header section
 * (its layout, checked before anything is allocated) and payload parts after
 * the layers' K/V, in this order:
 *
 * - thin keys: per layer whose channels are chosen, its kept channels, i32 [Hkv, k]
 *   (the thin rows themselves replace the layer's keys in the K/V part: per head
 *   its thin rows [count, k], then its whole ones [n − count, d]);
 * - low tier: per layer, packed keys then values (data [n, d·bits/8], steps and
 *   mins [n, d/group] at the cache dtype), positions i32, accumulated attention
 *   f32, queries seen f32 (n = the layer's low entries, heads one after another),
 *   then the balancer f32 [Hkv·d];
 * - merger: per layer the weight each retained entry stands for, f64 [n] in the
 *   K/V part's order (NaN: never merged into, the merger's base weight), then
 *   when the merger keeps thresholds a u8 [L·Hkv] of which are set and their
 *   values, f64 [L·Hkv].
 *
 * A file is untrusted input: the sections' shapes are checked with the header,
 * their values (channel indices, weights) when the payload is split.
 */
import { rowBytes } from "../../kernels/kv_quant.ts";
import type { KvDtype } from "../model/config.ts";
import type { PackedLowLayer } from "../engine/low_store.ts";
import { packedThinElements } from "../engine/thin_keys.ts";

/** MiKV's low tier: its spec, budget and entry counts. */
export interface LowSection {
  bits: 2 | 4;
  group: number;
  params: KvDtype;
  /** Entries each head may hold. */
  budget: number;
  /** Whether the balancer was set (from the first chunk). */
  balanced: boolean;
  /** [layer][head]: low entries. */
  lengths: number[][];
  /**
   * Per layer: slots per head when saved (the graph runs over them all, so a read resumes bit for bit only at the
   * same capacity); a loaded state uses it when it is at most {@link lowCapacity}'s bound.
   */
  capacity: number[];
}

/** The capacity a loaded low layer gets: the saved one, unless it exceeds 2·(largest head) + 16 (then that head's). */
export function lowCapacity(saved: number, lengths: number[]): number {
  const most = Math.max(0, ...lengths);
  return saved <= 2 * most + 16 ? Math.max(saved, most) : most;
}

/** Thin keys: channels kept, the whole window, and each head's thin rows. */
export interface ThinSection {
  channels: number;
  window: number;
  /** [layer][head]: thin rows (each head's oldest). */
  counts: number[][];
  /** Per layer: whether its channels are chosen (then they are in the payload). */
  chosen: boolean[];
}

/** A merger's state: whose it is, and whether it keeps per-head thresholds. */
export interface MergerSection {
  name: string;
  thresholds: boolean;
}

/** The sections a version-2 header may carry. */
export interface Sections {
  low?: LowSection;
  thin?: ThinSection;
  merger?: MergerSection;
}

/** The payload parts of the sections. */
export interface SectionPayload {
  /** Per layer: its kept channels [Hkv·k], null when not chosen. */
  thin?: (Int32Array | null)[];
  low?: PackedLowLayer[];
  merger?: { weights: Float64Array[]; thresholds?: { set: Uint8Array; values: Float64Array } };
}

/** Dimensions the sections are checked against. */
export interface Dims {
  layers: number;
  kvHeads: number;
  headDim: number;
  kvDtype: KvDtype;
  /** [layer][head]: retained entries. */
  lengths: number[][];
}

const isInt = (v: unknown, max = Number.MAX_SAFE_INTEGER): v is number =>
  typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= max;
const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === "object" && !Array.isArray(v);
const grid = (v: unknown, L: number, K: number, max: (l: number, h: number) => number): v is number[][] =>
  Array.isArray(v) && v.length === L &&
  v.every((row, l) => Array.isArray(row) && row.length === K && row.every((n, h) => isInt(n, max(l, h))));

/** Checks the sections of a header (`h`: the parsed JSON) against its dimensions; `bad` makes the error. */
export function checkSections(h: Record<string, unknown>, dims: Dims, bad: (what: string) => Error): void {
  const need = (ok: boolean, what: string) => {
    if (!ok) throw bad(what);
  };
  const { layers: L, kvHeads: K, headDim: d } = dims;
  if (h.low !== undefined) {
    const low = h.low;
    need(isObj(low), "low tier");
    const s = low as Record<string, unknown>;
    need(s.bits === 2 || s.bits === 4, "low tier bits (2 or 4)");
    need(isInt(s.group, d) && (s.group as number) > 0 && d % (s.group as number) === 0, "low tier group");
    need((d * (s.bits as number)) % 8 === 0, "low tier row size");
    need(s.params === dims.kvDtype, "low tier step type (the cache dtype)");
    need(isInt(s.budget, 2 ** 31 - 1) && typeof s.balanced === "boolean", "low tier budget");
    need(grid(s.lengths, L, K, () => s.budget as number), "low tier entry counts (at most its budget)");
    need(Array.isArray(s.capacity) && s.capacity.length === L && s.capacity.every((c) => isInt(c)), "low capacity");
  }
  if (h.thin !== undefined) {
    const thin = h.thin;
    need(isObj(thin), "thin keys");
    const t = thin as Record<string, unknown>;
    need(isInt(t.channels, d - 1) && (t.channels as number) > 0, "thin key channels (1 to d − 1)");
    need(isInt(t.window, 2 ** 31 - 1), "thin key window");
    need(grid(t.counts, L, K, (l, h) => dims.lengths[l][h]), "thin key rows (at most the entries)");
    need(Array.isArray(t.chosen) && t.chosen.length === L && t.chosen.every((x) => typeof x === "boolean"), "chosen");
    const counts = t.counts as number[][];
    need((t.chosen as boolean[]).every((c, l) => c || counts[l].every((n) => n === 0)), "thin rows without channels");
  }
  if (h.merger !== undefined) {
    const m = h.merger;
    need(isObj(m) && typeof m.name === "string" && typeof m.thresholds === "boolean", "merger");
  }
}

/** Bytes of the layers' keys in the K/V part: packed thin rows, or whole rows. */
export function keyElements(dims: Dims, thin: ThinSection | undefined, l: number): number {
  const lengths = dims.lengths[l];
  if (thin) return packedThinElements(thin.counts[l], lengths, thin.channels, dims.headDim);
  return lengths.reduce((a, b) => a + b, 0) * dims.headDim;
}

/** Bytes of one packed low layer of `n` entries. */
function lowLayerBytes(s: LowSection, n: number, dims: Dims): number {
  const d = dims.headDim;
  const param = s.params === "float32" ? 4 : 2;
  return 2 * n * (rowBytes(d, s.bits) + 2 * (d / s.group) * param) + 12 * n + 4 * dims.kvHeads * d;
}

/** Bytes of the sections' payload parts. */
export function sectionBytes(s: Sections, dims: Dims): number {
  const { layers: L, kvHeads: K } = dims;
  const sum = (row: number[]) => row.reduce((a, b) => a + b, 0);
  let n = 0;
  if (s.thin) { for (const c of s.thin.chosen) n += c ? K * s.thin.channels * 4 : 0; }
  if (s.low) { for (const row of s.low.lengths) n += lowLayerBytes(s.low, sum(row), dims); }
  if (s.merger) {
    for (const row of dims.lengths) n += 8 * sum(row);
    if (s.merger.thresholds) n += L * K * 9;
  }
  return n;
}

/** The sections' payload parts, in file order. */
export function sectionParts(p: SectionPayload): Uint8Array[] {
  const out: Uint8Array[] = [];
  const push = (a: ArrayBufferView) => out.push(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
  for (const c of p.thin ?? []) if (c) push(c);
  for (const x of p.low ?? []) {
    for (const q of [x.keys, x.values]) [q.data, q.scales, q.mins].forEach(push);
    [x.positions, x.accumulated, x.seen, x.balance].forEach(push);
  }
  if (p.merger) {
    p.merger.weights.forEach(push);
    if (p.merger.thresholds) [p.merger.thresholds.set, p.merger.thresholds.values].forEach(push);
  }
  return out;
}

/**
 * Splits the sections' parts off `take` (which hands out the next bytes of the checked payload) and checks their
 * values: channels ascending in [0, d), weights NaN or finite and positive, thresholds set 0 or 1 and
 * not NaN where set (−∞ is a threshold D2O can reach: a head whose keys have no direction).
 */
export function decodeSections(
  s: Sections,
  dims: Dims,
  take: (n: number) => ArrayBuffer,
  bad: (what: string) => Error,
): SectionPayload {
  const { layers: L, kvHeads: K, headDim: d } = dims;
  const out: SectionPayload = {};
  if (s.thin) {
    const k = s.thin.channels;
    out.thin = s.thin.chosen.map((chosen) => {
      if (!chosen) return null;
      const c = new Int32Array(take(K * k * 4));
      for (let h = 0; h < K; h++) {
        for (let i = 0; i < k; i++) {
          const x = c[h * k + i];
          if (!(x >= 0 && x < d && (i === 0 || x > c[h * k + i - 1]))) throw bad("thin key channels");
        }
      }
      return c;
    });
  }
  if (s.low) {
    const low = s.low;
    const spec = { bits: low.bits, group: low.group, params: low.params };
    const f32 = low.params === "float32";
    const rb = rowBytes(d, low.bits), groups = d / low.group, param = f32 ? 4 : 2;
    out.low = low.lengths.map((row) => {
      const n = row.reduce((a, b) => a + b, 0);
      const rows = () => ({
        spec,
        rows: n,
        d,
        data: new Uint8Array(take(n * rb)),
        scales: f32 ? new Float32Array(take(n * groups * param)) : new Uint16Array(take(n * groups * param)),
        mins: f32 ? new Float32Array(take(n * groups * param)) : new Uint16Array(take(n * groups * param)),
      });
      const keys = rows(), values = rows();
      return {
        lengths: Int32Array.from(row),
        keys,
        values,
        positions: new Int32Array(take(n * 4)),
        accumulated: new Float32Array(take(n * 4)),
        seen: new Float32Array(take(n * 4)),
        balance: new Float32Array(take(K * d * 4)),
      };
    });
  }
  if (s.merger) {
    const weights = dims.lengths.map((row) => {
      const w = new Float64Array(take(8 * row.reduce((a, b) => a + b, 0)));
      for (const x of w) if (!Number.isNaN(x) && !(Number.isFinite(x) && x > 0)) throw bad("merge weights");
      return w;
    });
    out.merger = { weights };
    if (s.merger.thresholds) {
      const set = new Uint8Array(take(L * K));
      const values = new Float64Array(take(L * K * 8));
      if (set.some((x, i) => x > 1 || (x === 1 && Number.isNaN(values[i])))) throw bad("merge thresholds");
      out.merger.thresholds = { set, values };
    }
  }
  return out;
}
