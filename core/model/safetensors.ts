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
const MAX_HEADER = 100 * 1024 * 1024;

/**
 * Reads the header of a safetensors file: 8 bytes of little-endian length, then
 * that much JSON. Only the header is read, never the tensor data.
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
    const lenBytes = await readExactly(file, 0, 8, path);
    const len = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
    if (len <= 0 || len > MAX_HEADER || 8 + len > size) {
      throw new TomeError("modelInvalid", `${path} is not a safetensors file (bad header length ${len})`);
    }
    let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    try {
      header = JSON.parse(new TextDecoder().decode(await readExactly(file, 8, len, path)));
    } catch (err) {
      if (err instanceof TomeError) throw err;
      throw new TomeError("modelInvalid", `${path} has a corrupt safetensors header`);
    }
    const base = 8 + len;
    const out = new Map<string, TensorInfo>();
    for (const [name, t] of Object.entries(header)) {
      if (name === "__metadata__") continue;
      const [b, e] = t.data_offsets ?? [];
      if (!(t.dtype in BYTES)) {
        throw new TomeError(
          "modelInvalid",
          `${path}: tensor ${name} has dtype ${t.dtype}; tome reads F32, F16 and BF16`,
        );
      }
      const count = t.shape.reduce((a, x) => a * x, 1);
      if (!Number.isInteger(b) || e - b !== count * BYTES[t.dtype as Dtype] || base + e > size) {
        throw new TomeError("modelInvalid", `${path}: tensor ${name} has a byte range that does not match its shape`);
      }
      out.set(name, { name, dtype: t.dtype as Dtype, shape: t.shape, begin: base + b, end: base + e, file: path });
    }
    return out;
  } finally {
    file.close();
  }
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
    if (n === null) throw new TomeError("modelInvalid", `${path} is truncated`);
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
