/**
 * Writes GGUF v3 files: metadata, tensor infos, aligned tensor data. The file
 * is written beside its target under a temporary name and renamed into place,
 * so an interrupted write never leaves a partial model behind.
 */
import { dirname } from "node:path";
import { ggmlTypeNamed, typeBytes } from "../../../kernels/quant_gguf.ts";
import { TomeError } from "../../errors.ts";
import { DEFAULT_ALIGNMENT, GGUF_MAGIC, type GgufKv, type GgufValue, VT, VT_SIZE } from "./format.ts";

/** A tensor to write: GGML dims (dims[0] fastest), type name, and its bytes (made when written). */
export interface GgufTensorToWrite {
  name: string;
  dims: number[];
  type: string;
  data: () => Uint8Array | Promise<Uint8Array>;
}

const encoder = new TextEncoder();

/** A growable little-endian byte buffer. */
class Bytes {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;
  private room(n: number) {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  push(b: Uint8Array) {
    this.room(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  num(type: number, v: number | boolean) {
    const n = Number(v);
    this.room(8);
    const d = this.view;
    const at = this.length;
    if (type === VT.UINT8 || type === VT.BOOL) d.setUint8(at, n);
    else if (type === VT.INT8) d.setInt8(at, n);
    else if (type === VT.UINT16) d.setUint16(at, n, true);
    else if (type === VT.INT16) d.setInt16(at, n, true);
    else if (type === VT.UINT32) d.setUint32(at, n, true);
    else if (type === VT.INT32) d.setInt32(at, n, true);
    else if (type === VT.FLOAT32) d.setFloat32(at, n, true);
    else if (type === VT.UINT64) d.setBigUint64(at, BigInt(n), true);
    else if (type === VT.INT64) d.setBigInt64(at, BigInt(n), true);
    else if (type === VT.FLOAT64) d.setFloat64(at, n, true);
    else throw new Error(`not a numeric GGUF type: ${type}`);
    this.length += VT_SIZE[type];
  }
  str(s: string) {
    const b = encoder.encode(s);
    this.num(VT.UINT64, b.length);
    this.push(b);
  }
  value(type: number, v: GgufValue, itemType?: number) {
    if (type === VT.STRING) return this.str(v as string);
    if (type !== VT.ARRAY) return this.num(type, v as number | boolean);
    if (itemType === undefined) throw new Error("array metadata needs an element type");
    const arr = v as GgufValue[];
    this.num(VT.UINT32, itemType);
    this.num(VT.UINT64, arr.length);
    if (itemType === VT.ARRAY) throw new Error("nested metadata arrays are not written");
    for (const x of arr) this.value(itemType, x);
  }
  concat(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

/** Metadata helpers: a typed entry from a plain value. */
export const kv = {
  str: (value: string): GgufKv => ({ type: VT.STRING, value }),
  u32: (value: number): GgufKv => ({ type: VT.UINT32, value }),
  i32: (value: number): GgufKv => ({ type: VT.INT32, value }),
  f32: (value: number): GgufKv => ({ type: VT.FLOAT32, value }),
  bool: (value: boolean): GgufKv => ({ type: VT.BOOL, value }),
  strs: (value: string[]): GgufKv => ({ type: VT.ARRAY, itemType: VT.STRING, value }),
  f32s: (value: number[]): GgufKv => ({ type: VT.ARRAY, itemType: VT.FLOAT32, value }),
  i32s: (value: number[]): GgufKv => ({ type: VT.ARRAY, itemType: VT.INT32, value }),
};

/** Encodes the header (everything before the data section, padded) and the tensors' relative offsets. */
export function encodeHeader(
  metadata: Map<string, GgufKv>,
  tensors: { name: string; dims: number[]; type: string }[],
  alignment = DEFAULT_ALIGNMENT,
): { header: Uint8Array; offsets: number[]; dataBytes: number } {
  const b = new Bytes();
  b.num(VT.UINT32, GGUF_MAGIC);
  b.num(VT.UINT32, 3);
  b.num(VT.UINT64, tensors.length);
  b.num(VT.UINT64, metadata.size);
  for (const [key, e] of metadata) {
    b.str(key);
    b.num(VT.UINT32, e.type);
    b.value(e.type, e.value, e.itemType);
  }
  const offsets: number[] = [];
  let off = 0;
  for (const t of tensors) {
    const type = ggmlTypeNamed(t.type);
    b.str(t.name);
    b.num(VT.UINT32, t.dims.length);
    for (const d of t.dims) b.num(VT.UINT64, d);
    b.num(VT.UINT32, type.id);
    b.num(VT.UINT64, off);
    offsets.push(off);
    const bytes = typeBytes(type, t.dims.reduce((x, y) => x * y, 1));
    off += Math.ceil(bytes / alignment) * alignment;
  }
  const pad = (alignment - (b.length % alignment)) % alignment;
  b.push(new Uint8Array(pad));
  return { header: b.concat(), offsets, dataBytes: off };
}

/** Writes a GGUF v3 file atomically (temporary file beside `path`, then rename). */
export async function writeGguf(
  path: string,
  metadata: Map<string, GgufKv>,
  tensors: GgufTensorToWrite[],
): Promise<void> {
  const alignment = Number(metadata.get("general.alignment")?.value ?? DEFAULT_ALIGNMENT);
  const { header } = encodeHeader(metadata, tensors, alignment);
  let tmp: string;
  try {
    tmp = await Deno.makeTempFile({ dir: dirname(path) || ".", prefix: ".tome-gguf-", suffix: ".tmp" });
  } catch (err) {
    throw outputError(err, path);
  }
  try {
    const file = await Deno.open(tmp, { write: true, truncate: true });
    try {
      await writeAll(file, header);
      for (const t of tensors) {
        const data = await t.data();
        const want = typeBytes(ggmlTypeNamed(t.type), t.dims.reduce((x, y) => x * y, 1));
        if (data.length !== want) throw new Error(`tensor ${t.name}: ${data.length} bytes, [${t.dims}] needs ${want}`);
        await writeAll(file, data);
        const pad = (alignment - (data.length % alignment)) % alignment;
        if (pad) await writeAll(file, new Uint8Array(pad));
      }
    } finally {
      file.close();
    }
    // temporary files are private (0600); the model gets the permissions a new file would
    if (Deno.build.os !== "windows") await Deno.chmod(tmp, 0o666 & ~Deno.umask());
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    if (err instanceof TomeError || !(err instanceof Error) || err.constructor.name === "Error") throw err;
    throw outputError(err, path);
  }
}

function outputError(err: unknown, path: string): TomeError {
  return new TomeError("output", `cannot write ${path}: ${err instanceof Error ? err.message : String(err)}`);
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await file.write(bytes.subarray(at));
}
