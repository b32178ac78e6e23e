/** Worker side of the safetensors fuzzer: write the case to a file, read its header and every tensor. */
import { join } from "node:path";
import { readHeader, readTensor } from "../../core/model/safetensors.ts";

/** Nothing to prepare. */
export async function setup(dir: string): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
}

/** Reads the case as a safetensors file; returns each tensor's entry and how many values it read. */
export async function runCase(input: Uint8Array, dir: string): Promise<unknown> {
  const path = join(dir, "case.safetensors");
  await Deno.writeFile(path, input);
  const out = [];
  for (const t of (await readHeader(path)).values()) {
    // a header accepted but its data unreadable is reported as such: the judge fails it
    const values = await readTensor(t).then((v) => v.length, (err) => `${err?.name}: ${err?.message}`);
    out.push({ name: t.name, dtype: t.dtype, shape: t.shape, begin: t.begin, end: t.end, values });
  }
  return out;
}
