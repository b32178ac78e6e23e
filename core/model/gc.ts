/**
 * A full garbage collection, on request. Building a graph reads every weight
 * into short-lived typed arrays; V8 collects them lazily, so without this the
 * build's garbage (279 MB at the 360M shape with q8 weights) is still resident
 * while onnxruntime loads the graph it wrote, and sets the process's peak.
 *
 * V8's `gc` is exposed by setting `--expose-gc` through `node:v8` and reading
 * it from a fresh context (`node:vm`), once; where that fails, nothing is done.
 */
import v8 from "node:v8";
import vm from "node:vm";

let gc: (() => void) | null | undefined;

/** Runs a full garbage collection when the runtime allows it; returns whether it ran. */
export function collectGarbage(): boolean {
  if (gc === undefined) {
    try {
      v8.setFlagsFromString("--expose-gc");
      const f = vm.runInNewContext("gc");
      gc = typeof f === "function" ? f : null;
    } catch {
      gc = null;
    }
  }
  gc?.();
  return gc !== null;
}
