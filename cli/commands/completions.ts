import { Argument, type Command, type Option } from "commander";
import { usage, writeStdout } from "../output.ts";

/** `tome completions bash|zsh|fish`: shell completion scripts, generated from the commands themselves. */
export function completionsCommand(program: Command): void {
  program.command("completions")
    .description("print a shell completion script")
    .addArgument(new Argument("<shell>", "bash, zsh or fish").choices(["bash", "zsh", "fish"]))
    .addHelpText(
      "after",
      `
Examples:
  tome completions bash > ~/.local/share/bash-completion/completions/tome
  tome completions zsh > "\${fpath[1]}/_tome"
  tome completions fish > ~/.config/fish/completions/tome.fish`,
    )
    .action(async (shell: string) => {
      const cmds = program.commands.filter((c) => c.name() !== "help");
      const script = shell === "bash" ? bash(cmds) : shell === "zsh" ? zsh(cmds) : shell === "fish" ? fish(cmds) : null;
      if (script === null) throw usage(`unknown shell ${shell}`);
      await writeStdout(script);
    });
}

const longFlags = (c: Command) => c.options.map((o: Option) => o.long).filter((l): l is string => !!l);

function bash(cmds: Command[]): string {
  const cases = cmds.map((c) => {
    const choices = c.options.filter((o) => o.argChoices).map((o) =>
      `    ${o.long}) COMPREPLY=($(compgen -W "${o.argChoices!.join(" ")}" -- "$cur")); return;;`
    );
    return `  ${c.name()})\n    case "$prev" in\n${choices.join("\n")}\n    esac\n    opts="${
      longFlags(c).join(" ")
    } --help";;`;
  });
  return `# bash completion for tome
_tome() {
  local cur prev cmd opts
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  cmd="\${COMP_WORDS[1]}"
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "${cmds.map((c) => c.name()).join(" ")} --help --version" -- "$cur"))
    return
  fi
  case "$cmd" in
${cases.join("\n")}
  *) opts="";;
  esac
  if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur")); else COMPREPLY=($(compgen -f -- "$cur")); fi
}
complete -o filenames -F _tome tome
`;
}

function zsh(cmds: Command[]): string {
  const esc = (s: string) => s.replace(/[\[\]:'"]/g, " ");
  const sub = cmds.map((c) => {
    const opts = c.options.filter((o) => o.long).map((o) => {
      const arg = o.required || o.optional
        ? (o.argChoices ? `:value:(${o.argChoices.join(" ")})` : ":value:_files")
        : "";
      return `      '${o.long}[${esc(o.description)}]${arg}'`;
    });
    return `    ${c.name()})\n      _arguments \\\n${opts.join(" \\\n")} \\\n        '*:file:_files' ;;`;
  });
  return `#compdef tome
_tome() {
  local -a commands
  commands=(
${cmds.map((c) => `    '${c.name()}:${esc(c.description())}'`).join("\n")}
  )
  if (( CURRENT == 2 )); then
    _describe 'command' commands
    return
  fi
  case "$words[2]" in
${sub.join("\n")}
  esac
}
_tome "$@"
`;
}

function fish(cmds: Command[]): string {
  const esc = (s: string) => s.replace(/'/g, "\\'");
  const lines = [
    "# fish completion for tome",
    `complete -c tome -n __fish_use_subcommand -f -a '${cmds.map((c) => c.name()).join(" ")}'`,
    ...cmds.map((c) => `complete -c tome -n __fish_use_subcommand -f -a ${c.name()} -d '${esc(c.description())}'`),
  ];
  for (const c of cmds) {
    for (const o of c.options) {
      if (!o.long) continue;
      const choices = o.argChoices ? ` -x -a '${o.argChoices.join(" ")}'` : o.required || o.optional ? " -r" : "";
      lines.push(
        `complete -c tome -n '__fish_seen_subcommand_from ${c.name()}' -l ${o.long.slice(2)}${choices} -d '${
          esc(o.description)
        }'`,
      );
    }
  }
  return lines.join("\n") + "\n";
}
