"""``tunseal completion bash|zsh|fish``: shell completion generated from the CLI's own argparse
parser, so a new subcommand or option completes without anyone editing a script.

The parser is walked into a :class:`Node` tree (commands, options, choices, which options take
a value, which positionals are files); each shell's script is that tree written as data plus a
small fixed function that walks the words typed so far. Install:

    tunseal completion bash > /usr/share/bash-completion/completions/tunseal
    tunseal completion zsh  > /usr/share/zsh/vendor-completions/_tunseal
    tunseal completion fish > /usr/share/fish/vendor_completions.d/tunseal.fish

(install.sh and the .deb do this).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["SHELLS", "Node", "generate", "profile_arg", "register", "tree"]

SHELLS: Final = ("bash", "zsh", "fish")
FILE_ARGS: Final = frozenset({"file", "FILE", "output", "PATH", "socket"})
"""Positionals and option values (by dest or metavar) completed with file names."""
_PROFILE_ATTR: Final = "tunseal_completes_profiles"
PROFILE_NAMES: Final = "list --names"
"""The command (after the program's name) whose output, one name per line, completes a
profile name: asked of the helper when TAB is pressed, for at most PROFILE_TIMEOUT seconds."""
PROFILE_TIMEOUT: Final = 2


def profile_arg(action: argparse.Action) -> argparse.Action:
    """Mark a positional as a profile name: it completes with the helper's profiles."""
    setattr(action, _PROFILE_ATTR, True)
    return action


@dataclass
class Node:
    """One command level: ``path`` is the words that lead to it ("" for the top)."""

    path: str
    help: str = ""
    commands: dict[str, Node] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    """option string -> its help."""
    valued: set[str] = field(default_factory=set)
    """Options that take a value (the next word is not a command)."""
    file_options: set[str] = field(default_factory=set)
    choices: list[str] = field(default_factory=list)
    """Fixed values of its positionals (lockdown on|off|status)."""
    files: bool = False
    """A positional is a file name."""
    profiles: bool = False
    """A positional is a profile name."""

    def walk(self) -> list[Node]:
        out = [self]
        for child in self.commands.values():
            out += child.walk()
        return out


def tree(parser: argparse.ArgumentParser, path: str = "", help_text: str = "") -> Node:
    node = Node(path, help_text)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                node.commands[name] = tree(sub, f"{path} {name}".strip(), helps.get(name, ""))
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            for opt in action.option_strings:
                node.options[opt] = (action.help or "").replace("%(default)s", str(action.default))
                if action.nargs != 0:
                    node.valued.add(opt)
                    if action.dest in FILE_ARGS or (action.metavar in FILE_ARGS):
                        node.file_options.add(opt)
        elif action.choices:
            node.choices += [str(c) for c in action.choices]
        elif getattr(action, _PROFILE_ATTR, False):
            node.profiles = True
        elif action.dest in FILE_ARGS:
            node.files = True
    return node


def generate(shell: str, parser: argparse.ArgumentParser, prog: str = "tunseal") -> str:
    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r}; choose one of {', '.join(SHELLS)}")
    root = tree(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](root, prog)


def _words(n: Node) -> list[str]:
    return [*n.commands, *n.choices, *sorted(n.options)]


def _q(text: str) -> str:
    """Single-quoted for any of the three shells (fish accepts \\' inside; we avoid quotes)."""
    return "'" + text.replace("'", "") + "'"


def _key(prog: str, node: Node) -> str:
    """A level's key in the scripts' tables: the words that lead to it, the program's first
    (bash refuses an empty key)."""
    return f"{prog} {node.path}".strip()


def _names(prog: str) -> str:
    """The shell command that prints the profile names (nothing when the helper is away)."""
    return f"timeout {PROFILE_TIMEOUT} {prog} {PROFILE_NAMES} 2>/dev/null"


def _ident(prog: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in prog)


# --- bash ---------------------------------------------------------------------------------------


def _bash(root: Node, prog: str) -> str:
    f = _ident(prog)
    nodes = root.walk()

    def table(name: str, value: Any) -> str:
        rows = "\n".join(f"    [{_q(_key(prog, n))}]={_q(value(n))}" for n in nodes)
        return f"declare -gA _{f}_{name}=(\n{rows}\n)"

    return f"""# bash completion for {prog}; generated by '{prog} completion bash' from its parser
{table("words", lambda n: " ".join(_words(n)))}
{table("commands", lambda n: " ".join(n.commands))}
{table("valued", lambda n: " ".join(sorted(n.valued)))}
{table("fileopts", lambda n: " ".join(sorted(n.file_options)))}
{table("files", lambda n: "1" if n.files else "")}
{table("profiles", lambda n: "1" if n.profiles else "")}
_{f}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" path={prog} word i skip=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if ((skip)); then skip=0; prev=""; continue; fi
        if [[ $word == -* ]]; then
            [[ " ${{_{f}_valued[$path]}} " == *" $word "* ]] && skip=1
            continue
        fi
        if [[ " ${{_{f}_commands[$path]}} " == *" $word "* ]]; then
            path="$path $word"
        fi
    done
    ((COMP_CWORD > 1)) && prev="${{COMP_WORDS[COMP_CWORD - 1]}}"
    if ((skip)); then
        if [[ " ${{_{f}_fileopts[$path]}} " == *" $prev "* ]]; then
            COMPREPLY=($(compgen -f -- "$cur"))
        else
            COMPREPLY=()
        fi
        return 0
    fi
    COMPREPLY=($(compgen -W "${{_{f}_words[$path]}}" -- "$cur"))
    if [[ -n ${{_{f}_files[$path]}} && $cur != -* ]]; then
        COMPREPLY+=($(compgen -f -- "$cur"))
    fi
    if [[ -n ${{_{f}_profiles[$path]}} && $cur != -* ]]; then
        COMPREPLY+=($(compgen -W "$({_names(prog)})" -- "$cur"))
    fi
    return 0
}}
complete -F _{f} {prog}
"""


# --- zsh ----------------------------------------------------------------------------------------


def _zsh(root: Node, prog: str) -> str:
    f = _ident(prog)
    nodes = root.walk()

    def table(name: str, value: Any) -> str:
        rows = "\n".join(f"    {_q(_key(prog, n))} {_q(value(n))}" for n in nodes)
        return f"    local -A {name}\n    {name}=(\n{rows}\n    )"

    return f"""#compdef {prog}
# zsh completion for {prog}; generated by '{prog} completion zsh' from its parser
_{f}() {{
{table("cmdwords", lambda n: " ".join(_words(n)))}
{table("commands", lambda n: " ".join(n.commands))}
{table("valued", lambda n: " ".join(sorted(n.valued)))}
{table("fileopts", lambda n: " ".join(sorted(n.file_options)))}
{table("files", lambda n: "1" if n.files else "")}
{table("profiles", lambda n: "1" if n.profiles else "")}
    local cmdpath={prog} word i skip=0 prev=""
    for ((i = 2; i < CURRENT; i++)); do
        word=${{words[i]}}
        if ((skip)); then skip=0; continue; fi
        if [[ $word == -* ]]; then
            [[ " ${{valued[$cmdpath]}} " == *" $word "* ]] && skip=1
            continue
        fi
        if [[ " ${{commands[$cmdpath]}} " == *" $word "* ]]; then
            cmdpath="$cmdpath $word"
        fi
    done
    prev=${{words[CURRENT-1]}}
    if ((skip)); then
        [[ " ${{fileopts[$cmdpath]}} " == *" $prev "* ]] && _files
        return
    fi
    compadd -- ${{=cmdwords[$cmdpath]}}
    [[ -n ${{files[$cmdpath]}} ]] && _files
    [[ -n ${{profiles[$cmdpath]}} ]] && compadd -- ${{(f)"$({_names(prog)})"}}
    return 0
}}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _{f} "$@"
else
    compdef _{f} {prog}
fi
"""


# --- fish ---------------------------------------------------------------------------------------


def _fish(root: Node, prog: str) -> str:
    lines = [f"# fish completion for {prog}; generated by '{prog} completion fish' from its "
             "parser", f"complete -c {prog} -f"]
    for node in root.walk():
        depth = len(node.path.split()) if node.path else 0
        if depth == 0:
            cond = "__fish_use_subcommand"
        else:
            cond = " ; and ".join(f"__fish_seen_subcommand_from {w}" for w in node.path.split())
            if node.commands:
                cond += f" ; and not __fish_seen_subcommand_from {' '.join(node.commands)}"
        for name, child in node.commands.items():
            lines.append(f"complete -c {prog} -n {_q(cond)} -a {name} -d {_q(child.help[:60])}")
        for choice in node.choices:
            lines.append(f"complete -c {prog} -n {_q(cond)} -a {choice}")
        if node.files:
            lines.append(f"complete -c {prog} -n {_q(cond)} -F")
        if node.profiles:
            lines.append(f"complete -c {prog} -n {_q(cond)} -a {_q('(' + _names(prog) + ')')}")
        for opt, text in sorted(node.options.items()):
            flag = f"-l {opt[2:]}" if opt.startswith("--") else f"-s {opt[1:]}"
            value = " -r" if opt in node.valued else ""
            value += " -F" if opt in node.file_options else ""
            lines.append(f"complete -c {prog} -n {_q(cond if depth else 'true')} {flag}{value} "
                         f"-d {_q(text[:60])}")
    return "\n".join(lines) + "\n"


# --- the command --------------------------------------------------------------------------------


def register(sub: Any) -> None:
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh, fish)",
                       description="Print the completion script for SHELL, generated from "
                       "this command's own options: eval it, or install it (see "
                       "installers/README.md).")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(command=cmd_completion)


def cmd_completion(client: Any, args: argparse.Namespace) -> int:
    from core.cli import _parser

    sys.stdout.write(generate(args.shell, _parser()))
    return 0
