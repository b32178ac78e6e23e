/**
 * Reads GGUF headers as untrusted input: every count, length and offset is
 * checked against the file's size before anything is allocated, tensor data
 * must lie inside the file, aligned, without overlaps. Tensor data is read
 * lazily, one tensor at a time.
 */
import { DEQUANTIZABLE, dequantize, ggmlType, typeBytes } from "../../../kernels/quant_gguf.ts";
import { fsError, TomeError } from "../../errors.ts";
import {
  DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  type GgufHeader,
  type GgufKv,
  type GgufTensorInfo,
  type GgufValue,
  VT,
  VT_SIZE,
} from "./format.ts";

/** The largest header tome reads (metadata with a 150K-token vocabulary is ~10 MB). */
export const MAX_HEADER_BYTES = 256 * 1024 * 1024;
const MAX_DIMS = 4;
const MAX_NESTING = 4;

class NeedMore extends Error {}

/** A cursor over the first bytes of a file whose full size is known. */
class Cursor {
  at = 0;
  private view: DataView;
  constructor(private buf: Uint8Array, readonly fileSize: number, private path: string) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  bad(what: string): never {
    throw new TomeError("modelInvalid", `${this.path} is not a valid GGUF file: ${what}`);
  }
  /** Checks that n more bytes exist in the file (else invalid) and in the buffer (else read more). */
  need(n: number, what: string): void {
    if (!Number.isSafeInteger(n) || n < 0 || this.at + n > this.fileSize) {
      this.bad(`${what} runs past the end of the file (at byte ${this.at})`);
    }
    if (this.at + n > this.buf.length) throw new NeedMore();
  }
  u8(): number {
    this.need(1, "a value");
    return this.buf[this.at++];
  }
  u32(what = "a value"): number {
    this.need(4, what);
    const v = this.view.getUint32(this.at, true);
    this.at += 4;
    return v;
  }
  u64(what = "a value"): number {
    this.need(8, what);
    const v = this.view.getBigUint64(this.at, true);
    this.at += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.bad(`${what} is ${v}, larger than any file`);
    return Number(v);
  }
  scalar(type: number): number | boolean {
    const n = VT_SIZE[type];
    this.need(n, "a value");
    const a = this.at;
    this.at += n;
    const v = this.view;
    switch (type) {
      case VT.UINT8:
        return v.getUint8(a);
      case VT.INT8:
        return v.getInt8(a);
      case VT.UINT16:
        return v.getUint16(a, true);
      case VT.INT16:
        return v.getInt16(a, true);
      case VT.UINT32:
        return v.getUint32(a, true);
      case VT.INT32:
        return v.getInt32(a, true);
      case VT.FLOAT32:
        return v.getFloat32(a, true);
      case VT.BOOL: {
        const b = v.getUint8(a);
        if (b > 1) this.bad(`a bool has the value ${b}`);
        return b === 1;
      }
      case VT.UINT64:
        return Number(v.getBigUint64(a, true));
      case VT.INT64:
        return Number(v.getBigInt64(a, true));
      case VT.FLOAT64:
        return v.getFloat64(a, true);
    }
    return this.bad(`unknown value type ${type}`);
  }
  string(what: string): string {
    const len = this.u64(`the length of ${what}`);
    this.need(len, what);
    const s = new TextDecoder("utf-8", { fatal: false }).decode(this.buf.subarray(this.at, this.at + len));
    this.at += len;
    return s;
  }
  value(type: number, depth: number, key: string): { value: GgufValue; itemType?: number } {
    if (type === VT.STRING) return { value: this.string(`the value of ${key}`) };
    if (type !== VT.ARRAY) {
      if (!(type in VT_SIZE)) this.bad(`${key} has unknown value type ${type}`);
      return { value: this.scalar(type) };
    }
    if (depth >= MAX_NESTING) this.bad(`${key} nests arrays more than ${MAX_NESTING} deep`);
    const itemType = this.u32(`the element type of ${key}`);
    if (!(itemType in VT_SIZE)) this.bad(`${key} is an array of unknown value type ${itemType}`);
    const count = this.u64(`the length of ${key}`);
    // every element takes at least its smallest encoding: the count must fit in the rest of the file
    if (count * VT_SIZE[itemType] > this.fileSize - this.at) {
      this.bad(`${key} claims ${count} elements, more than the file holds`);
    }
    if (itemType === VT.STRING) {
      const out: string[] = [];
      for (let i = 0; i < count; i++) out.push(this.string(`element ${i} of ${key}`));
      return { value: out, itemType };
    }
    if (itemType === VT.ARRAY) {
      const out: GgufValue[] = [];
      for (let i = 0; i < count; i++) out.push(this.value(VT.ARRAY, depth + 1, key).value);
      return { value: out, itemType };
    }
    const out: (number | boolean)[] = new Array(count);
    for (let i = 0; i < count; i++) out[i] = this.scalar(itemType);
    return { value: out as number[] | boolean[], itemType };
  }
}

function parse(buf: Uint8Array, fileSize: number, path: string, mtime: number): GgufHeader {
  const c: Cursor = new Cursor(buf, fileSize, path);
  if (fileSize < 24 || c.u32() !== GGUF_MAGIC) {
    throw new TomeError("modelInvalid", `${path} is not a GGUF file (no GGUF magic)`);
  }
  const version = c.u32();
  if (version !== 2 && version !== 3) c.bad(`version ${version} (tome reads GGUF v2 and v3)`);
  const tensorCount = c.u64("the tensor count");
  const kvCount = c.u64("the metadata count");
  // a key/value takes at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 8 + 4 + 8
  if (kvCount * 13 > fileSize || tensorCount * 32 > fileSize) {
    c.bad(`it claims ${tensorCount} tensors and ${kvCount} metadata entries, more than the file holds`);
  }
  const metadata = new Map<string, GgufKv>();
  for (let i = 0; i < kvCount; i++) {
    const key = c.string(`metadata key ${i}`);
    const type = c.u32(`the type of ${key}`);
    const { value, itemType } = c.value(type, 0, key);
    if (metadata.has(key)) c.bad(`metadata key ${key} appears twice`);
    metadata.set(key, itemType === undefined ? { type, value } : { type, itemType, value });
  }
  const alignKv = metadata.get("general.alignment");
  let alignment = DEFAULT_ALIGNMENT;
  if (alignKv) {
    const a = alignKv.value;
    if (typeof a !== "number" || !Number.isInteger(a) || a <= 0 || (a & (a - 1)) !== 0 || a > 1 << 20) {
      c.bad(`general.alignment ${JSON.stringify(a)} is not a power of two`);
    }
    alignment = a;
  }
  const raw: { name: string; dims: number[]; type: number; rel: number }[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = c.string(`the name of tensor ${i}`);
    if (names.has(name)) c.bad(`tensor ${name} appears twice`);
    names.add(name);
    const nd = c.u32(`the dimension count of ${name}`);
    if (nd < 1 || nd > MAX_DIMS) c.bad(`tensor ${name} has ${nd} dimensions`);
    const dims: number[] = [];
    for (let k = 0; k < nd; k++) dims.push(c.u64(`a dimension of ${name}`));
    const type = c.u32(`the type of ${name}`);
    const rel = c.u64(`the offset of ${name}`);
    raw.push({ name, dims, type, rel });
  }
  const dataStart = Math.ceil(c.at / alignment) * alignment;
  if (dataStart > fileSize) c.bad("the data section starts past the end of the file");
  const tensors: GgufTensorInfo[] = raw.map((r) => {
    const t = ggmlType(r.type);
    if (!t) c.bad(`tensor ${r.name} has unknown type ${r.type}`);
    let count = 1;
    for (const d of r.dims) {
      if (d < 1) c.bad(`tensor ${r.name} has a zero dimension`);
      count *= d;
      if (count > fileSize * 8) c.bad(`tensor ${r.name} [${r.dims}] has more elements than the file could hold`);
    }
    if (r.dims[0] % t.blockSize !== 0) {
      c.bad(`tensor ${r.name}: first dimension ${r.dims[0]} is not a multiple of the ${t.name} block (${t.blockSize})`);
    }
    const bytes = typeBytes(t, count);
    if (r.rel % alignment !== 0) c.bad(`tensor ${r.name} is not aligned to ${alignment} bytes`);
    const offset = dataStart + r.rel;
    if (offset + bytes > fileSize) {
      throw new TomeError(
        "modelInvalid",
        `${path}: tensor ${r.name} (${t.name} [${r.dims}]) lies past the end of the file (truncated download?)`,
      );
    }
    return { name: r.name, dims: r.dims, type: t.name, offset, bytes };
  });
  const sorted = [...tensors].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].offset < sorted[i - 1].offset + sorted[i - 1].bytes) {
      c.bad(`tensors ${sorted[i - 1].name} and ${sorted[i].name} overlap`);
    }
  }
  return { path, version, metadata, tensors, alignment, dataStart, fileSize, mtime };
}

/** Reads and checks the header of a GGUF file (metadata and tensor infos; no tensor data). */
export async function readGgufHeader(path: string): Promise<GgufHeader> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (err) {
    throw fsError(err, path, "model file");
  }
  try {
    const st = await file.stat();
    if (!st.isFile) throw new TomeError("modelInvalid", `${path} is not a file`);
    const size = st.size;
    let want = Math.min(size, 1 << 20);
    for (;;) {
      const buf = await readAt(file, 0, want, path);
      try {
        return parse(buf, size, path, st.mtime?.getTime() ?? 0);
      } catch (err) {
        if (!(err instanceof NeedMore)) throw err;
        if (want >= MAX_HEADER_BYTES) {
          throw new TomeError("modelInvalid", `${path}: GGUF metadata larger than ${MAX_HEADER_BYTES >> 20} MB`);
        }
        want = Math.min(size, want * 4, MAX_HEADER_BYTES);
      }
    }
  } finally {
    file.close();
  }
}

/** Reads one tensor's bytes from the file. */
export async function readTensorBytes(h: GgufHeader, t: GgufTensorInfo): Promise<Uint8Array> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(h.path, { read: true });
  } catch (err) {
    throw fsError(err, h.path, "model file");
  }
  try {
    return await readAt(file, t.offset, t.bytes, h.path);
  } finally {
    file.close();
  }
}

/** Reads one tensor and dequantizes it to float32 (GGML order: dims[0] fastest). */
export async function readTensorF32(h: GgufHeader, t: GgufTensorInfo): Promise<Float32Array> {
  if (!DEQUANTIZABLE.includes(t.type)) {
    throw new TomeError(
      "modelInvalid",
      `${h.path}: tensor ${t.name} is ${t.type}; tome reads ${DEQUANTIZABLE.join(", ")}`,
    );
  }
  const count = t.dims.reduce((a, b) => a * b, 1);
  return dequantize(t.type, await readTensorBytes(h, t), count);
}

async function readAt(file: Deno.FsFile, offset: number, length: number, path: string): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await file.seek(offset, Deno.SeekMode.Start);
  let at = 0;
  while (at < length) {
    const n = await file.read(buf.subarray(at));
    if (n === null) throw new TomeError("modelInvalid", `${path} is truncated`);
    at += n;
  }
  return buf;
}
