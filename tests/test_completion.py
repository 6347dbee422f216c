"""``tunseal completion bash|zsh|fish``: the scripts are loaded into the real shells and asked
what they complete. The scripts come from the parser, so a subcommand added to it (here, one
made up for the test) completes without anyone touching core/completion.py."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import completion
from core.cli import _parser

ROOT = Path(__file__).resolve().parents[1]


def script(shell: str) -> str:
    done = subprocess.run([sys.executable, "-m", "core.cli", "completion", shell], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def bash_complete(path: Path, words: list[str], cwd: Path = ROOT) -> list[str]:
    """What the loaded function offers for ``words`` (the last is the word being typed)."""
    quoted = " ".join("'" + w + "'" for w in words)
    code = (f"source {path}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _tunseal; "
            'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "--norc", "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=30, check=True)
    return done.stdout.split()


@pytest.fixture
def bash_script(tmp_path: Path) -> Path:
    path = tmp_path / "tunseal.bash"
    path.write_text(script("bash"))
    return path


def test_bash_registers_the_function(bash_script: Path) -> None:
    done = subprocess.run(["bash", "--norc", "-c", f"source {bash_script}; complete -p tunseal"],
                          capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == "complete -F _tunseal tunseal"


def test_bash_completes_commands_subcommands_and_choices(bash_script: Path) -> None:
    top = bash_complete(bash_script, ["tunseal", ""])
    for command in ("up", "down", "status", "doctor", "bugreport", "completion", "peer",
                    "--json", "--socket"):
        assert command in top
    assert bash_complete(bash_script, ["tunseal", "do"]) == ["down", "doctor"]
    assert bash_complete(bash_script, ["tunseal", "peer", ""]) == \
        ["add", "invite", "revoke", "list", "show", "remove", "--help", "-h"]
    # An option's value is not taken for a command: "/run/x" after --socket is skipped.
    assert bash_complete(bash_script, ["tunseal", "--socket", "/run/x", "lockdown", "o"]) == \
        ["on", "off"]
    assert bash_complete(bash_script, ["tunseal", "completion", ""])[:3] == \
        ["bash", "zsh", "fish"]
    assert "--allowed-ip" in bash_complete(bash_script, ["tunseal", "peer", "add", "x", "--"])


def test_bash_completes_file_names_where_a_file_goes(bash_script: Path, tmp_path: Path) -> None:
    (tmp_path / "office.tunseal").write_text("")
    assert bash_complete(bash_script, ["tunseal", "import", "off"], cwd=tmp_path) == \
        ["office.tunseal"]
    assert bash_complete(bash_script, ["tunseal", "bugreport", "-o", "off"], cwd=tmp_path) == \
        ["office.tunseal"]
    # Where no file goes, no file is offered.
    assert bash_complete(bash_script, ["tunseal", "up", "off"], cwd=tmp_path) == []


def test_a_new_subcommand_completes_by_itself(tmp_path: Path) -> None:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = sub.add_parser("frobnicate", help="made up for this test")
    extra.add_argument("--gently", action="store_true")
    path = tmp_path / "c.bash"
    path.write_text(completion.generate("bash", parser))
    assert bash_complete(path, ["tunseal", "frob"]) == ["frobnicate"]
    assert bash_complete(path, ["tunseal", "frobnicate", "--g"]) == ["--gently"]


def test_unknown_shell_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-m", "core.cli", "completion", "tcsh"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid choice: 'tcsh'" in done.stderr


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_loads_through_compinit_and_completes(tmp_path: Path) -> None:
    fpath = tmp_path / "functions"
    fpath.mkdir()
    (fpath / "_tunseal").write_text(script("zsh"))
    # compinit finds the #compdef line and binds the function to the command.
    done = subprocess.run(["zsh", "-fc", f"fpath=({fpath} $fpath); autoload -U compinit; "
                           f"compinit -u -d {tmp_path}/zcompdump; print -r -- $_comps[tunseal]"],
                          capture_output=True, text=True, timeout=60, check=True,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "_tunseal"
    # The function itself, with compadd and _files (completion-widget builtins, only callable
    # inside a widget) replaced by printers, over the words a user typed.
    code = (f"compdef() {{ :; }}; source {fpath}/_tunseal; "
            "compadd() { [[ $1 == -- ]] && shift; print -r -- \"$*\"; }; "
            "_files() { print -r -- FILES; }; "
            "words=(tunseal peer ''); CURRENT=3; _tunseal; "
            "words=(tunseal --socket /x lockdown ''); CURRENT=5; _tunseal; "
            "words=(tunseal export x -o ''); CURRENT=5; _tunseal")
    done = subprocess.run(["zsh", "-fc", code], capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.splitlines() == ["add invite revoke list show remove --help -h",
                                        "on off status --allow-lan --help -h", "FILES"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes(tmp_path: Path) -> None:
    path = tmp_path / "tunseal.fish"
    path.write_text(script("fish"))

    def complete(line: str) -> list[str]:
        done = subprocess.run(["fish", "--no-config", "-c", f"source {path}; complete -C '{line}'"],
                              capture_output=True, text=True, timeout=60, check=True,
                              env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        return [row.split("\t")[0] for row in done.stdout.splitlines()]

    assert complete("tunseal doc") == ["doctor"]
    assert complete("tunseal peer ") == ["add", "invite", "list", "remove", "revoke", "show"]
    assert complete("tunseal lockdown ") == ["off", "on", "status"]
    assert "--with-secrets" in complete("tunseal export x --")
