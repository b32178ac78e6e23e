/**
 * The GGUF container (v2/v3): magic "GGUF", version, tensor count, metadata
 * key/value count, the key/values, the tensor infos, padding to the alignment,
 * then the tensor data. All integers little-endian; strings are a u64 length
 * and UTF-8 bytes.
 */

/** "GGUF" read as a little-endian u32. */
export const GGUF_MAGIC = 0x46554747;

/** Default `general.alignment`. */
export const DEFAULT_ALIGNMENT = 32;

/** Metadata value types, as stored. */
export const VT = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

/** Bytes of a fixed-size value type (strings and arrays: their smallest encoding). */
export const VT_SIZE: Record<number, number> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  8: 8,
  9: 12,
  10: 8,
  11: 8,
  12: 8,
};

/** A metadata value: numbers (64-bit ones as numbers), booleans, strings, and arrays of them. */
export type GgufScalar = number | boolean | string;
export type GgufArray = string[] | number[] | boolean[] | GgufValue[];
export type GgufValue = GgufScalar | GgufArray;

/** One metadata entry with the type it is (or will be) stored as. */
export interface GgufKv {
  type: number;
  /** For arrays: the element type. */
  itemType?: number;
  value: GgufValue;
}

/** Where one tensor lies in a GGUF file, as its header says (checked against the file). */
export interface GgufTensorInfo {
  name: string;
  /** GGML order: dims[0] varies fastest (a Hugging Face [out, in] weight is [in, out] here). */
  dims: number[];
  /** GGML type name ("Q8_0"). */
  type: string;
  /** Absolute byte offset in the file. */
  offset: number;
  bytes: number;
}

/** A parsed GGUF header. */
export interface GgufHeader {
  path: string;
  version: number;
  metadata: Map<string, GgufKv>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Absolute offset of the data section. */
  dataStart: number;
  fileSize: number;
  mtime: number;
}

/** A metadata value by key, or undefined. */
export function meta(h: GgufHeader, key: string): GgufValue | undefined {
  return h.metadata.get(key)?.value;
}
