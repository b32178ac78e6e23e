import { bf16ToF32, f16ToF32, f32ToBf16 } from "../../kernels/fp16.ts";
import { fsError, TomeError } from "../errors.ts";

/** Element types tome reads from safetensors files. */
export type Dtype = "F32" | "F16" | "BF16";
const BYTES: Record<Dtype, number> = { F32: 4, F16: 2, BF16: 2 };

/** Where one tensor lies in a safetensors file. */
export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
  file: string;
}

/** The largest header tome accepts (the format allows 100 MB). */
export const MAX_HEADER = 100 * 1024 * 1024;

/**
 * Reads the header of a safetensors file: 8 bytes of little-endian length, then
 * that much JSON. Only the header is read, never the tensor data. The header is
 * untrusted input: every entry is checked (see {@link parseHeader}) and nothing
 * larger than the file is ever allocated because of it.
 */
export async function readHeader(path: string): Promise<Map<string, TensorInfo>> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (err) {
    throw fsError(err, path, "weights file");
  }
  try {
    const size = (await file.stat()).size;
    if (size < 8) throw invalid(path, `truncated: ${size} bytes is too short for a safetensors file`);
    const lenBytes = await readExactly(file, 0, 8, path);
    const len = new DataView(lenBytes.buffer).getBigUint64(0, true);
    if (len < 2n || len > BigInt(Math.min(MAX_HEADER, size - 8))) {
      throw invalid(
        path,
        `not a safetensors file: bad header length ${len} ${
          len > BigInt(size - 8) ? `exceeds the file (${size} bytes)` : "is out of range"
        }`,
      );
    }
    return parseHeader(await readExactly(file, 8, Number(len), path), size, path);
  } finally {
    file.close();
  }
}

/**
 * Validates the JSON header bytes of a safetensors file of `fileSize` bytes:
 * an object whose `__metadata__` (optional) maps strings to strings and whose
 * every other entry has a dtype tome reads, a shape of non-negative safe
 * integers and `data_offsets` [begin, end] inside the data section, covering
 * exactly product(shape) × dtype size bytes, no two tensors overlapping.
 * Returns the tensors with absolute byte ranges.
 */
export function parseHeader(json: Uint8Array, fileSize: number, path: string): Map<string, TensorInfo> {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
  } catch (err) {
    throw invalid(path, `corrupt safetensors header (${(err as Error).message.split("\n")[0]})`);
  }
  if (!isObject(header)) throw invalid(path, `safetensors header is ${kindOf(header)}, expected a JSON object`);
  const base = 8 + json.length;
  const dataSize = fileSize - base;
  const out = new Map<string, TensorInfo>();
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") {
      checkMetadata(t, path);
      continue;
    }
    const what = `tensor ${show(name)}`;
    if (!isObject(t)) throw invalid(path, `${what} is ${kindOf(t)}, expected an object`);
    if (typeof t.dtype !== "string" || !Object.hasOwn(BYTES, t.dtype)) {
      throw invalid(path, `${what} has dtype ${show(t.dtype)}; tome reads F32, F16 and BF16`);
    }
    const dtype = t.dtype as Dtype;
    const shape = t.shape;
    if (!Array.isArray(shape) || !shape.every((x) => Number.isSafeInteger(x) && x >= 0)) {
      throw invalid(path, `${what} has shape ${JSON.stringify(shape)}, expected an array of non-negative integers`);
    }
    const offsets = t.data_offsets;
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((x) => Number.isSafeInteger(x) && x >= 0) || offsets[0] > offsets[1]
    ) {
      throw invalid(
        path,
        `${what} has data_offsets ${JSON.stringify(offsets)}, expected [begin, end] with 0 ≤ begin ≤ end`,
      );
    }
    const [b, e] = offsets as [number, number];
    if (e > dataSize) {
      throw invalid(path, `${what} ends at byte ${e} of the data section, which holds ${dataSize} bytes`);
    }
    // the product stays ≤ dataSize or stops growing past it: no overflow, no huge number
    let bytes = BYTES[dtype];
    for (const x of shape) bytes = bytes > dataSize ? bytes : bytes * x;
    if (shape.includes(0)) bytes = 0;
    if (bytes !== e - b) {
      throw invalid(
        path,
        `${what} has a byte range that does not match its shape: ${e - b} bytes, but ${dtype} [${
          shape.join(", ")
        }] needs ${bytes > dataSize ? "more than the file holds" : bytes}`,
      );
    }
    out.set(name, { name, dtype, shape: [...shape] as number[], begin: base + b, end: base + e, file: path });
  }
  // empty tensors occupy no bytes and overlap nothing
  const sorted = [...out.values()].filter((t) => t.end > t.begin).sort((x, y) => x.begin - y.begin);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].begin < sorted[i - 1].end) {
      throw invalid(
        path,
        `tensors ${show(sorted[i - 1].name)} and ${show(sorted[i].name)} overlap`,
      );
    }
  }
  return out;
}

function checkMetadata(m: unknown, path: string): void {
  if (!isObject(m)) throw invalid(path, `__metadata__ is ${kindOf(m)}, expected an object of strings`);
  for (const [k, v] of Object.entries(m)) {
    if (typeof v !== "string") {
      throw invalid(path, `__metadata__ ${show(k)} is ${kindOf(v)}, expected a string`);
    }
  }
}

/** A name as it can go on one line of an error message: plain names bare, anything else quoted. */
function show(x: unknown): string {
  return typeof x === "string" && /^[\w.\-/]{1,200}$/.test(x) ? x : JSON.stringify(x)?.slice(0, 200) ?? String(x);
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function kindOf(x: unknown): string {
  return x === null ? "null" : Array.isArray(x) ? "an array" : typeof x === "object" ? "an object" : `a ${typeof x}`;
}

function invalid(path: string, what: string): TomeError {
  return new TomeError("modelInvalid", `${path}: ${what}`);
}

/** Reads one tensor's bytes and converts them to float32. */
export async function readTensor(info: TensorInfo): Promise<Float32Array> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(info.file, { read: true });
  } catch (err) {
    throw fsError(err, info.file, "weights file");
  }
  try {
    const bytes = await readExactly(file, info.begin, info.end - info.begin, info.file);
    const n = (info.end - info.begin) / BYTES[info.dtype];
    if (info.dtype === "F32") return new Float32Array(bytes.buffer, bytes.byteOffset, n);
    const half = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
    return info.dtype === "BF16" ? bf16ToF32(half) : f16ToF32(half);
  } finally {
    file.close();
  }
}

async function readExactly(file: Deno.FsFile, offset: number, length: number, path: string): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await file.seek(offset, Deno.SeekMode.Start);
  let at = 0;
  while (at < length) {
    const n = await file.read(buf.subarray(at));
    if (n === null) throw invalid(path, "truncated (the file changed while it was read?)");
    at += n;
  }
  return buf;
}

/** A tensor to write: float32 values (or a function making them, called once when written), stored as `dtype`. */
export interface TensorToWrite {
  name: string;
  shape: number[];
  data: Float32Array | (() => Float32Array);
}

/** Writes tensors to a safetensors file, converting float32 data to `dtype` (F32 or BF16). */
export async function writeSafetensors(
  path: string,
  tensors: TensorToWrite[],
  dtype: "F32" | "BF16",
  metadata: Record<string, string> = {},
): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const bytes = t.shape.reduce((a, b) => a * b, 1) * BYTES[dtype];
    header[t.name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8); // data stays 8-byte aligned
  const head = new TextEncoder().encode(json);
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    const len = new Uint8Array(8);
    new DataView(len.buffer).setBigUint64(0, BigInt(head.length), true);
    await writeAll(file, len);
    await writeAll(file, head);
    for (const t of tensors) {
      const values = typeof t.data === "function" ? t.data() : t.data;
      if (values.length !== t.shape.reduce((a, b) => a * b, 1)) {
        throw new Error(`tensor ${t.name}: data does not fit [${t.shape}]`);
      }
      const data = dtype === "F32" ? values : f32ToBf16(values);
      await writeAll(file, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
  } finally {
    file.close();
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await file.write(bytes.subarray(at));
}
