/** The mergers by name, for `--merge`. */
import { TomeError } from "../../errors.ts";
import { anchors } from "./anchors.ts";
import { d2o } from "./d2o.ts";
import { kvmerger } from "./kvmerger.ts";
import type { Merger } from "./merger.ts";

export type { MergeHead, Merger } from "./merger.ts";

/** Each merger's constructor (a merger holds per-run state, so every run makes its own). */
export const MERGERS: Record<string, () => Merger> = { d2o: () => d2o(), kvmerger: () => kvmerger(), anchors };

/** `--merge` values that merge nothing. */
export const NO_MERGE = "none";

/** A fresh merger by name; undefined for none; a usage error for an unknown name. */
export function makeMerger(name: string | undefined): Merger | undefined {
  if (name === undefined || name === NO_MERGE) return undefined;
  const make = MERGERS[name];
  if (!make) {
    throw new TomeError(
      "usage",
      `--merge: unknown method "${name}" (one of: ${Object.keys(MERGERS).join(", ")}, none)`,
    );
  }
  return make();
}
