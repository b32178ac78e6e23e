/** Every eviction policy tome has, by name. */
import { corm } from "./corm.ts";
import { full } from "./full.ts";
import { h2o } from "./h2o.ts";
import { knorm } from "./knorm.ts";
import { kvzip } from "./kvzip.ts";
import { locret } from "./locret.ts";
import type { Policy } from "./policy.ts";
import { pyramidkv } from "./pyramidkv.ts";
import { snapkv } from "./snapkv.ts";
import { streaming } from "./streaming.ts";
import { tova } from "./tova.ts";
import { fsError, TomeError } from "../errors.ts";
import { duo, parseDuoMask } from "./duo.ts";
import { ems } from "./ems.ts";
import { pyramid } from "./pyramid.ts";

export type { Policy, Protection, ScoreView } from "./policy.ts";
export { select } from "./select.ts";

export const POLICIES: Record<string, Policy> = {
  full,
  streaming,
  knorm,
  snapkv,
  pyramidkv,
  h2o,
  tova,
  corm,
  locret,
  kvzip,
  ems,
};

/** The default: SnapKV with the question patch. */
export const DEFAULT_POLICY = "snapkv";

/** Policies that need a file: duo (head masks). */
export const FILE_POLICIES = ["duo"];

/** Options of the policies that need more than a name. */
export interface PolicyOptions {
  /** duo: TSV of head gates, rows = layers, columns = KV heads. */
  mask?: string;
  /** duo: fraction of heads made streaming heads (default 0.5), or an explicit gate threshold. */
  sparsity?: number;
  threshold?: number;
}

/** Prefix that puts any scored policy under PyramidKV's per-layer schedule: `pyramid:h2o`. */
export const PYRAMID_PREFIX = "pyramid:";

/** A policy by name (`pyramid:NAME` wraps one), or a usage error listing them. */
export function policyByName(name: string): Policy {
  if (name.startsWith(PYRAMID_PREFIX)) return pyramidOf(policyByName(name.slice(PYRAMID_PREFIX.length)));
  const p = POLICIES[name];
  if (!p) {
    const all = [...Object.keys(POLICIES), ...FILE_POLICIES].join(", ");
    throw new TomeError(
      "usage",
      `unknown policy "${name}" (one of: ${all})${FILE_POLICIES.includes(name) ? " needs options" : ""}`,
    );
  }
  return p;
}

/** A policy by name for a model, reading the files some policies need. */
export async function makePolicy(
  name: string,
  dims: { layers: number; kvHeads: number },
  opts: PolicyOptions = {},
): Promise<Policy> {
  if (name.startsWith(PYRAMID_PREFIX)) {
    return pyramidOf(await makePolicy(name.slice(PYRAMID_PREFIX.length), dims, opts));
  }
  if (name !== "duo") return policyByName(name);
  if (!opts.mask) throw new TomeError("usage", "policy duo needs a head mask file (--duo-mask FILE)");
  let text: string;
  try {
    text = await Deno.readTextFile(opts.mask);
  } catch (err) {
    throw fsError(err, opts.mask, "head mask");
  }
  return duo(parseDuoMask(text, dims.layers, dims.kvHeads, opts, opts.mask));
}

function pyramidOf(inner: Policy): Policy {
  if (inner.keepsAll || inner.budgets) {
    throw new TomeError("usage", `pyramid: wraps a policy that evicts with one budget per layer, not ${inner.name}`);
  }
  return pyramid(inner);
}
