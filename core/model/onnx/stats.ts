/**
 * The attention statistics the graph returns per layer, [1, Hkv, P+S] each:
 * the softmax mass every entry receives from the observation-window queries
 * (`window`), from every query (`all`), the largest from any window query
 * (`max`), and from the last query (`last`), summed over each KV head's group.
 */
export const STATS = ["window", "all", "max", "last"] as const;
export type StatName = typeof STATS[number];

/** Output names of one layer's statistics. */
export type StatNames = Record<StatName, string>;
