"""``tunseal completion bash|zsh|fish``: the scripts are loaded into the real shells and asked
what they complete. The scripts come from the parser, so a subcommand added to it (here, one
made up for the test) completes without anyone touching core/completion.py."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import helpers_proc
import pytest
from helpers_proc import HelperProcess

from core import completion
from core.cli import _parser

ROOT = Path(__file__).resolve().parents[1]


def script(shell: str) -> str:
    done = subprocess.run([sys.executable, "-m", "core.cli", "completion", shell], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def bash_complete(path: Path, words: list[str], cwd: Path = ROOT,
                  env: dict[str, str] | None = None) -> list[str]:
    """What the loaded function offers for ``words`` (the last is the word being typed)."""
    quoted = " ".join("'" + w + "'" for w in words)
    code = (f"source {path}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _tunseal; "
            'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "--norc", "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=30, check=True, env=env)
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


@pytest.fixture
def helper_with_profiles(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A real helper holding two profiles, and a ``tunseal`` on a PATH directory that talks to
    it (as the installed command would): (that directory, the profile names)."""
    helper = HelperProcess(tmp_path / "helper", "root")
    (tmp_path / "helper").mkdir()
    names = ["office", "officelab"]
    try:
        helper.start()
        for name in names:
            path = tmp_path / f"{name}.tunseal"
            path.write_text(f'format = 1\n[tunnel]\nname = "{name}"\n[interface]\n'
                            'addresses = ["10.77.0.250/32"]\n[peer]\n'
                            'endpoint = "198.18.0.1:51900"\n')
            helpers_proc.cli(helper.socket, "import", str(path))
        yield _tunseal_on_path(tmp_path, helper.socket), names
    finally:
        helper.stop()


def _tunseal_on_path(tmp_path: Path, socket: Path) -> Path:
    """A directory holding a ``tunseal`` that runs this tree's CLI against ``socket``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "tunseal"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m core.cli '
                       f'--socket {socket} "$@"\n')
    wrapper.chmod(0o755)
    return bindir


def _path_env(bindir: Path, home: Path) -> dict[str, str]:
    return {"HOME": str(home), "PATH": f"{bindir}:/usr/bin:/bin"}


@pytest.mark.keyring
def test_profile_names_complete_from_the_helper(
        helper_with_profiles: tuple[Path, list[str]], tmp_path: Path) -> None:
    bindir, names = helper_with_profiles
    env = _path_env(bindir, tmp_path)
    listed = subprocess.run(["tunseal", "list", "--names"], env=env, capture_output=True,
                            text=True, timeout=30, check=True)
    assert listed.stdout.splitlines() == names

    bash = tmp_path / "tunseal.bash"
    bash.write_text(script("bash"))
    assert bash_complete(bash, ["tunseal", "up", "off"], env=env) == names
    assert bash_complete(bash, ["tunseal", "doctor", "officel"], env=env) == ["officelab"]
    assert set(names) <= set(bash_complete(bash, ["tunseal", "trust", ""], env=env))
    # Not where no profile goes: a gateway peer's name, an invitation.
    assert bash_complete(bash, ["tunseal", "peer", "remove", "off"], env=env) == []
    assert bash_complete(bash, ["tunseal", "join", "off"], env=env) == []

    zsh_fn = tmp_path / "_tunseal"
    zsh_fn.write_text(script("zsh"))
    code = (f"compdef() {{ :; }}; source {zsh_fn}; "
            "compadd() { [[ $1 == -- ]] && shift; print -r -- \"$*\"; }; "
            "words=(tunseal down ''); CURRENT=3; _tunseal")
    done = subprocess.run(["zsh", "-fc", code], capture_output=True, text=True, timeout=60,
                          check=True, env=env)
    assert done.stdout.splitlines()[-1] == " ".join(names)

    if shutil.which("fish") is not None:
        fish = tmp_path / "tunseal.fish"
        fish.write_text(script("fish"))
        done = subprocess.run(["fish", "--no-config", "-c",
                               f"source {fish}; complete -C 'tunseal export '"],
                              capture_output=True, text=True, timeout=60, check=True, env=env)
        offered = [row.split("\t")[0] for row in done.stdout.splitlines()]
        assert set(names) <= set(offered), offered


def test_profile_names_complete_to_nothing_without_a_helper(tmp_path: Path) -> None:
    bindir = _tunseal_on_path(tmp_path, tmp_path / "absent.sock")
    bash = tmp_path / "tunseal.bash"
    bash.write_text(script("bash"))
    offered = bash_complete(bash, ["tunseal", "up", ""], env=_path_env(bindir, tmp_path))
    assert [w for w in offered if not w.startswith("-")] == [], offered
