/** Typed arrays a cache row can live in. */
export type Rows = Float32Array | Uint16Array | Int32Array;

/**
 * Order-preserving compaction of one head's rows. The head's entries are the
 * virtual sequence `past[0..P) ++ fresh[0..S)`; `keep` holds ascending indices
 * into it. Row j of the result (at `dst[(base + j)·width]`) is entry keep[j].
 * `dst` may be the array `past` lives in (in place): kept past rows only move
 * towards the front, so reading ahead of writing is safe.
 *
 * past rows: `past[(pastBase + i)·width …]`; fresh rows: `fresh[(freshBase + i)·width …]`.
 */
export function compactRows(
  dst: Rows,
  base: number,
  past: Rows,
  pastBase: number,
  P: number,
  fresh: Rows | null,
  freshBase: number,
  keep: Int32Array,
  width: number,
): void {
  for (let j = 0; j < keep.length; j++) {
    const src = keep[j];
    const to = (base + j) * width;
    if (src < P) {
      const from = (pastBase + src) * width;
      if (from !== to || dst !== past) {
        if (dst === past) dst.copyWithin(to, from, from + width);
        else dst.set(past.subarray(from, from + width), to);
      }
    } else {
      const from = (freshBase + src - P) * width;
      dst.set(fresh!.subarray(from, from + width), to);
    }
  }
}
