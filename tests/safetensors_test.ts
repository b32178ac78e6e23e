/**
 * The safetensors header as untrusted input: files written byte by byte here
 * (independent of tome's writer); valid edge cases are read back exactly, and
 * each kind of damage is refused with `modelInvalid` naming the file and the
 * defect, without allocating anything sized by the header.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { TomeError } from "../core/errors.ts";
import { parseHeader, readHeader, readTensor } from "../core/model/safetensors.ts";
import { tempDir } from "./helpers.ts";

/** A file: 8-byte little-endian length, the header text as given, then `data`. */
function file(header: string | object, data: Uint8Array = new Uint8Array(0), length?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, length ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

/** Float32 values as little-endian bytes. */
function f32(values: number[]): Uint8Array {
  const b = new Uint8Array(values.length * 4);
  const v = new DataView(b.buffer);
  values.forEach((x, i) => v.setFloat32(i * 4, x, true));
  return b;
}

async function refused(bytes: Uint8Array, pattern: RegExp) {
  await using d = await tempDir();
  const p = join(d.path, "w.safetensors");
  await Deno.writeFile(p, bytes);
  await assert.rejects(readHeader(p), (e: unknown) => {
    assert.ok(e instanceof TomeError, `not a TomeError: ${e}`);
    assert.equal(e.kind, "modelInvalid");
    assert.ok(e.message.startsWith(`${p}: `), e.message);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes("\n"), "one line");
    return true;
  });
}

Deno.test("safetensors: valid edge cases are read exactly (scalar, empty tensor, padding, no metadata, F16)", async () => {
  await using d = await tempDir();
  const data = new Uint8Array([...f32([1.5, -2, 3.25]), ...f32([7]), 0x00, 0x3c /* f16 1.0 */]);
  const header = {
    a: { dtype: "F32", shape: [3], data_offsets: [0, 12] },
    s: { dtype: "F32", shape: [], data_offsets: [12, 16] },
    // an empty tensor inside another's range occupies no bytes and overlaps nothing
    e: { dtype: "BF16", shape: [4, 0], data_offsets: [4, 4] },
    h: { dtype: "F16", shape: [1, 1], data_offsets: [16, 18] },
  };
  const p = join(d.path, "ok.safetensors");
  await Deno.writeFile(p, file(JSON.stringify(header) + "        ", data));
  const t = await readHeader(p);
  const base = 8 + JSON.stringify(header).length + 8;
  assert.deepEqual([...t.keys()].sort(), ["a", "e", "h", "s"]);
  assert.deepEqual({ ...t.get("a")!, file: "" }, {
    name: "a",
    dtype: "F32",
    shape: [3],
    begin: base,
    end: base + 12,
    file: "",
  });
  assert.deepEqual([...await readTensor(t.get("a")!)], [1.5, -2, 3.25]);
  assert.deepEqual([...await readTensor(t.get("s")!)], [7]);
  assert.deepEqual([...await readTensor(t.get("e")!)], []);
  assert.deepEqual([...await readTensor(t.get("h")!)], [1]);
});

Deno.test("safetensors: every kind of damaged header is refused, naming the defect", async () => {
  const ok = { dtype: "F32", shape: [2], data_offsets: [0, 8] };
  const data = f32([1, 2]);
  await refused(Uint8Array.of(1, 2, 3), /truncated: 3 bytes/);
  await refused(file(ok, data, 1n << 62n), /bad header length 4611686018427387904 exceeds the file/);
  await refused(file(ok, data, 1n), /bad header length 1 is out of range/);
  await refused(file('{"a": ', data), /corrupt safetensors header/);
  await refused(file(new Uint8Array([0x7b, 0xff, 0x7d]).reduce((s, b) => s + String.fromCharCode(b), "")), /corrupt/);
  await refused(file("null", data), /safetensors header is null, expected a JSON object/);
  await refused(file("[1]", data), /header is an array/);
  await refused(file({ a: null }, data), /tensor a is null, expected an object/);
  await refused(file({ a: { ...ok, dtype: "I64" } }, data), /tensor a has dtype I64; tome reads F32, F16 and BF16/);
  await refused(file({ a: { ...ok, dtype: "toString" } }, data), /dtype toString/);
  await refused(file({ a: { ...ok, shape: undefined } }, data), /tensor a has shape undefined/);
  await refused(
    file({ a: { ...ok, shape: ["2"] } }, data),
    /has shape \["2"\], expected an array of non-negative integers/,
  );
  await refused(file({ a: { ...ok, shape: [4, 0.5] } }, data), /has shape \[4,0\.5\]/);
  await refused(file({ a: { ...ok, shape: [-1, -2] } }, data), /has shape \[-1,-2\]/);
  await refused(file({ a: { ...ok, shape: 2 } }, data), /has shape 2/);
  await refused(file({ a: { ...ok, data_offsets: [-8, 0] } }, data), /data_offsets \[-8,0\], expected \[begin, end\]/);
  await refused(file({ a: { ...ok, data_offsets: [8, 0] } }, data), /data_offsets \[8,0\]/);
  await refused(file({ a: { ...ok, data_offsets: [0, 4, 8] } }, data), /data_offsets \[0,4,8\]/);
  await refused(file({ a: { ...ok, data_offsets: [0.5, 8.5] } }, data), /data_offsets \[0\.5,8\.5\]/);
  await refused(file({ a: { ...ok, data_offsets: "0,8" } }, data), /data_offsets "0,8"/);
  await refused(
    file({ a: { ...ok, data_offsets: [0, 12] } }, data),
    /ends at byte 12 of the data section, which holds 8 bytes/,
  );
  await refused(
    file({ a: { ...ok, data_offsets: [0, 4] } }, data),
    /does not match its shape: 4 bytes, but F32 \[2\] needs 8/,
  );
  await refused(
    file({ a: { ...ok, shape: [2 ** 52, 2 ** 52] } }, data),
    /does not match its shape: 8 bytes, but F32 \[4503599627370496, 4503599627370496\] needs more than the file holds/,
  );
  await refused(
    file({ a: ok, b: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }, data),
    /tensors a and b overlap/,
  );
  await refused(file({ __metadata__: null, a: ok }, data), /__metadata__ is null, expected an object of strings/);
  await refused(file({ __metadata__: { format: ["pt"] }, a: ok }, data), /__metadata__ format is an array/);
  await refused(file({ "a\nb": { ...ok, dtype: "X" } }, data), /tensor "a\\nb" has dtype X/);
});

Deno.test("safetensors: nothing sized by the header is allocated before it is checked", () => {
  // parseHeader sees only the header bytes and the file size: a shape of 2^104 elements or
  // offsets near 2^53 are refused by arithmetic, never by allocating
  const h = (x: object) => new TextEncoder().encode(JSON.stringify(x));
  const huge = h({ a: { dtype: "F32", shape: [2 ** 52, 2 ** 52], data_offsets: [0, 2 ** 53 - 1] } });
  assert.throws(() => parseHeader(huge, 8 + huge.length + 16, "f"), /ends at byte 9007199254740991/);
  const ok = h({ a: { dtype: "BF16", shape: [3, 0, 2 ** 53 - 1], data_offsets: [0, 0] } });
  assert.equal(parseHeader(ok, 8 + ok.length, "f").get("a")!.end, 8 + ok.length);
});
