/**
 * Silences native code that writes to the process's stderr directly (Dawn's
 * "Warning: …" lines when the WebGPU device opens), which no onnxruntime log
 * option reaches: file descriptor 2 points at /dev/null while `fn` runs.
 * TOME_DEBUG keeps everything; off Linux/macOS, or without libc, it is a no-op.
 */

const LIBC: Record<string, string> = { linux: "libc.so.6", darwin: "libSystem.B.dylib" };

/** Runs `fn` with stderr sent to /dev/null when `quiet` (and TOME_DEBUG is unset). */
export async function quietStderr<T>(quiet: boolean, fn: () => Promise<T>): Promise<T> {
  const name = LIBC[Deno.build.os];
  if (!quiet || !name || Deno.env.get("TOME_DEBUG")) return fn();
  let libc;
  try {
    libc = Deno.dlopen(name, {
      dup: { parameters: ["i32"], result: "i32" },
      dup2: { parameters: ["i32", "i32"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
      open: { parameters: ["buffer", "i32"], result: "i32" },
    });
  } catch {
    return fn();
  }
  const O_WRONLY = 1;
  const devnull = libc.symbols.open(new TextEncoder().encode("/dev/null\0"), O_WRONLY);
  const saved = devnull >= 0 ? libc.symbols.dup(2) : -1;
  if (saved >= 0) libc.symbols.dup2(devnull, 2);
  try {
    return await fn();
  } finally {
    if (saved >= 0) {
      libc.symbols.dup2(saved, 2);
      libc.symbols.close(saved);
    }
    if (devnull >= 0) libc.symbols.close(devnull);
    libc.close();
  }
}
