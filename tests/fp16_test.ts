import assert from "node:assert/strict";
import {
  bf16ToF32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  fromBf16Bits,
  fromF16Bits,
  toBf16Bits,
  toF16Bits,
} from "../kernels/fp16.ts";
import { normals, uniform } from "../kernels/random.ts";

// deno-lint-ignore no-explicit-any
const f16round = (Math as any).f16round as (x: number) => number;

Deno.test("float16: every bit pattern round-trips through float32", () => {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const back = f32ToF16(f16ToF32(all));
  for (let h = 0; h < 65536; h++) {
    const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
    if (isNaN) assert.ok(Number.isNaN(fromF16Bits(back[h])), `NaN ${h}`);
    else assert.equal(back[h], h, `pattern ${h.toString(16)}`);
  }
});

Deno.test("float16: rounding agrees with Math.f16round (nearest, ties to even) on random and edge values", () => {
  const r = uniform(5);
  const values = [
    ...normals(r, 20000, 1),
    ...normals(r, 5000, 1e-5),
    ...normals(r, 5000, 3e4),
    65504,
    65519.99,
    65520,
    1e6,
    -1e6,
    2 ** -24,
    2 ** -25,
    2 ** -25 * 1.5,
    2 ** -26,
    6.1e-5,
    1 + 2 ** -11,
    1 + 3 * 2 ** -11,
    0,
    -0,
    Infinity,
    -Infinity,
  ];
  for (const x of values) {
    const f = Math.fround(x);
    assert.ok(
      Object.is(fromF16Bits(toF16Bits(f)), f16round(f)),
      `x = ${f}: ${fromF16Bits(toF16Bits(f))} vs ${f16round(f)}`,
    );
  }
  assert.equal(toF16Bits(1), 0x3c00);
  assert.equal(toF16Bits(65504), 0x7bff);
  assert.equal(toF16Bits(2 ** -24), 0x0001);
});

Deno.test("bfloat16: nearest with ties to even, exact widening", () => {
  const r = uniform(9);
  const xs = Float32Array.from([
    ...normals(r, 20000, 1),
    ...normals(r, 100, 1e30),
    1 + 2 ** -8,
    1 + 3 * 2 ** -8,
    -0,
    Infinity,
  ]);
  const bits = f32ToBf16(xs);
  const wide = bf16ToF32(bits);
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i];
    assert.equal(bits[i], toBf16Bits(x));
    assert.equal(wide[i], fromBf16Bits(bits[i]));
    // independent check: no other bfloat16 is nearer, and on a tie the even one is chosen
    const lo = fromBf16Bits(bits[i] - 1), hi = fromBf16Bits(bits[i] + 1);
    const err = Math.abs(wide[i] - x);
    if (Number.isFinite(x) && x !== 0) {
      assert.ok(err <= Math.abs(lo - x) && err <= Math.abs(hi - x), `not nearest for ${x}`);
      if (err === Math.abs(lo - x) || err === Math.abs(hi - x)) {
        assert.equal(bits[i] & 1, 0, `tie not to even for ${x}`);
      }
    }
  }
  assert.equal(toBf16Bits(1 + 2 ** -8), 0x3f80); // tie → even (1.0)
  assert.equal(toBf16Bits(1 + 3 * 2 ** -8), 0x3f82); // tie → even (up)
  assert.ok(Number.isNaN(fromBf16Bits(toBf16Bits(NaN))));
});
