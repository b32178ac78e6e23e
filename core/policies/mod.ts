/** Every eviction policy tome has, by name. */
import { corm } from "./corm.ts";
import { full } from "./full.ts";
import { h2o } from "./h2o.ts";
import { knorm } from "./knorm.ts";
import type { Policy } from "./policy.ts";
import { pyramidkv } from "./pyramidkv.ts";
import { snapkv } from "./snapkv.ts";
import { streaming } from "./streaming.ts";
import { tova } from "./tova.ts";
import { TomeError } from "../errors.ts";

export type { Policy, Protection, ScoreView } from "./policy.ts";
export { select } from "./select.ts";

export const POLICIES: Record<string, Policy> = { full, streaming, knorm, snapkv, pyramidkv, h2o, tova, corm };

/** The default: SnapKV with the question patch. */
export const DEFAULT_POLICY = "snapkv";

/** A policy by name, or a usage error listing them. */
export function policyByName(name: string): Policy {
  const p = POLICIES[name];
  if (!p) throw new TomeError("usage", `unknown policy "${name}" (one of: ${Object.keys(POLICIES).join(", ")})`);
  return p;
}
