/** Charts for `tome eval`: Vega-Lite specs rendered to SVG by Vega, and to PNG by resvg. */
import type { Budget } from "../core/eval/options.ts";
import * as vega from "vega";
import * as vl from "vega-lite";
import { join } from "node:path";
import { TomeError } from "../core/errors.ts";

type Spec = vl.TopLevelSpec;

/** Renders a Vega-Lite spec to `<out>/<name>.svg` and `.png`; returns their paths. */
export async function render(spec: Spec, out: string, name: string): Promise<string[]> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: "none" });
  const svg = await view.toSVG(2);
  view.finalize();
  try {
    await Deno.mkdir(out, { recursive: true });
    const svgPath = join(out, `${name}.svg`);
    const pngPath = join(out, `${name}.png`);
    await Deno.writeTextFile(svgPath, svg);
    const { Resvg } = await import("@resvg/resvg-js");
    await Deno.writeFile(
      pngPath,
      new Resvg(svg, { font: { loadSystemFonts: true }, background: "white" }).render().asPng(),
    );
    return [svgPath, pngPath];
  } catch (err) {
    throw new TomeError("output", `cannot write plots to ${out}: ${(err as Error).message}`);
  }
}

/** Recall by depth × length, one panel per policy and budget. */
export function heatmap(cells: { config: string; length: number; depth: number; recall: number }[]): Spec {
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: "Needle recall by depth and length",
    data: { values: cells },
    facet: { field: "config", type: "nominal", title: null },
    columns: 4,
    spec: {
      width: 160,
      height: 160,
      mark: { type: "rect" },
      encoding: {
        x: { field: "length", type: "ordinal", title: "haystack tokens" },
        y: { field: "depth", type: "ordinal", title: "needle depth (%)", sort: "ascending" },
        color: { field: "recall", type: "quantitative", scale: { domain: [0, 1], scheme: "viridis" }, title: "recall" },
        tooltip: [{ field: "recall", type: "quantitative", format: ".2f" }],
      },
    },
  };
}

/** Score against KV footprint, one line per policy. */
export function curve(points: { policy: string; budget: Budget | null; footprint: number; recall: number }[]): Spec {
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: "Recall against KV footprint",
    width: 420,
    height: 280,
    data: { values: points },
    mark: { type: "line", point: true },
    encoding: {
      x: {
        field: "footprint",
        type: "quantitative",
        scale: { type: "log" },
        title: "KV footprint (fraction of the full cache)",
      },
      y: { field: "recall", type: "quantitative", scale: { domain: [0, 1] }, title: "needle recall" },
      color: { field: "policy", type: "nominal" },
      tooltip: [{ field: "budget" }, { field: "recall", format: ".2f" }],
    },
  };
}
