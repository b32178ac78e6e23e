/** Resident memory of this process, in bytes: now, and the peak so far (Linux `VmHWM`; elsewhere the peak seen by calls). */
export interface Rss {
  now: number;
  peak: number;
}

let peakSeen = 0;

/** Reads this process's resident set size now and its peak. */
export function rss(): Rss {
  let now = Deno.memoryUsage().rss;
  let peak = 0;
  try {
    const status = Deno.readTextFileSync("/proc/self/status");
    const kb = (key: string) => {
      const m = status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, "m"));
      return m ? Number(m[1]) * 1024 : 0;
    };
    now = kb("VmRSS") || now;
    peak = kb("VmHWM");
  } catch {
    // not Linux: fall back to the peak observed by our own calls
  }
  peakSeen = Math.max(peakSeen, now, peak);
  return { now, peak: peakSeen };
}
