/** The mergers by name, for `--merge`. */
import { TomeError } from "../../errors.ts";
import { anchors } from "./anchors.ts";
import { d2o } from "./d2o.ts";
import { emsMerge } from "./ems.ts";
import { kvmerger } from "./kvmerger.ts";
import type { Merger } from "./merger.ts";

export type { MergeHead, Merger } from "./merger.ts";

/** Each merger's constructor (a merger holds per-run state, so every run makes its own). */
export const MERGERS: Record<string, () => Merger> = {
  d2o: () => d2o(),
  kvmerger: () => kvmerger(),
  anchors,
  ems: () => emsMerge(),
};

/** The `--merge` default: no merger added (the policy's own merge, if it has one, as EMS does). */
export const NO_MERGE = "none";
/** `--merge` value that drops what is evicted even under a policy with its own merge (EMS's score alone). */
export const DROP = "drop";

/**
 * The run's merger: by name; for none (or no name) the policy's own, if any;
 * none at all for `drop`; a usage error for an unknown name.
 */
export function makeMerger(name: string | undefined, policy: { merger?: () => Merger } = {}): Merger | undefined {
  if (name === DROP) return undefined;
  if (name === undefined || name === NO_MERGE) return policy.merger?.();
  const make = MERGERS[name];
  if (!make) {
    throw new TomeError(
      "usage",
      `--merge: unknown method "${name}" (one of: ${Object.keys(MERGERS).join(", ")}, none, drop)`,
    );
  }
  return make();
}
