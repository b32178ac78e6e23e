import { pyramid } from "./pyramid.ts";
import { snapkv } from "./snapkv.ts";

/** PyramidKV as its paper states it: SnapKV's score under the pyramid schedule (the same as `pyramid:snapkv`). */
export const pyramidkv = { ...pyramid(snapkv), name: "pyramidkv" };
