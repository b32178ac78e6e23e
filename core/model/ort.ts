/**
 * Loads onnxruntime-node once, lazily (commands that need no model never load
 * its native library).
 *
 * Float16 inputs fail in Deno (`not enough space: expected 8, got 0`, DESIGN.md
 * §7) because onnxruntime-common maps Uint16Array data to Deno's native
 * Float16Array. Removing `globalThis.Float16Array` before onnxruntime is first
 * imported makes it keep the Uint16Array bit patterns, which is what tome
 * passes for float16 tensors.
 */
import type * as Ort from "onnxruntime-node";

export type { Ort };
let loaded: Promise<typeof Ort> | null = null;

/** The onnxruntime-node module. */
export function ort(): Promise<typeof Ort> {
  if (!loaded) {
    // deno-lint-ignore no-explicit-any
    delete (globalThis as any).Float16Array;
    loaded = import("onnxruntime-node");
  }
  return loaded;
}
