import assert from "node:assert/strict";
import { tome } from "./helpers.ts";

Deno.test("tome completions bash: completes subcommands, options and option choices", async () => {
  const script = (await tome(["completions", "bash"])).stdout;
  const complete = async (words: string[]) => {
    const line = `source /dev/stdin; COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${
      words.length - 1
    }; _tome; echo "\${COMPREPLY[@]}"`;
    const child = new Deno.Command("bash", { args: ["-c", line], stdin: "piped", stdout: "piped" }).spawn();
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(script));
    await w.close();
    return new TextDecoder().decode((await child.output()).stdout).trim().split(/\s+/);
  };
  assert.deepEqual(await complete(["tome", "su"]), ["summarize"]);
  assert.ok((await complete(["tome", "ask", "--bud"])).includes("--budget"));
  assert.deepEqual(await complete(["tome", "summarize", "--style", ""]), ["brief", "detailed", "bullets"]);
  const fish = (await tome(["completions", "fish"])).stdout;
  assert.match(fish, /^complete -c tome -n '__fish_seen_subcommand_from ask' -l policy -x -a 'full streaming/m);
  assert.match((await tome(["completions", "zsh"])).stdout, /^#compdef tome/);
});
