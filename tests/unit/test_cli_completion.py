"""`bgplb completion bash|zsh`: the generated function completes what the parser accepts
(run in a real bash, with the words a user would have typed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bgplb.cli import build_parser, main
from bgplb.cli_completion import bash_script, zsh_script


def complete(script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    """COMPREPLY for the command line `words` (the last one is being typed)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
        '_bgplb; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run(
        [bash, "--norc", "-c", program], capture_output=True, text=True, timeout=30, cwd=cwd
    )
    assert out.returncode == 0, out.stderr
    return sorted(x for x in out.stdout.splitlines() if x)


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "bgplb.bash"
    path.write_text(bash_script(build_parser()))
    return path


def test_commands_subcommands_and_options(script: Path) -> None:
    assert complete(script, "bgplb", "dr") == ["drain"]
    assert "router" in complete(script, "bgplb", "")
    assert complete(script, "bgplb", "lab", "") == ["down", "exec", "status", "up"]
    assert complete(script, "bgplb", "config", "c") == ["check"]
    assert {"--json", "--watch", "--interval"} <= set(complete(script, "bgplb", "status", "--"))
    # options of one command are not offered for another
    assert "--watch" not in complete(script, "bgplb", "drain", "--")
    assert complete(script, "bgplb", "completion", "") == ["bash", "zsh"]


def test_option_values_files_and_choices(script: Path, tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text("")
    assert complete(script, "bgplb", "agent", "-c", "ag", cwd=tmp_path) == ["agent.toml"]
    assert complete(script, "bgplb", "config", "check", "ag", cwd=tmp_path) == ["agent.toml"]
    assert complete(script, "bgplb", "agent", "--log-level", "w") == ["warning"]
    assert complete(script, "bgplb", "status", "--role", "") == ["agent", "router"]
    # after an option that takes a free value nothing is guessed
    assert complete(script, "bgplb", "status", "--interval", "") == []
    # options before the subcommand's own words do not hide the command path
    assert complete(script, "bgplb", "status", "--json", "--s") == ["--socket"]


def test_the_command_prints_both_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    assert capsys.readouterr().out == bash_script(build_parser())
    assert main(["completion", "zsh"]) == 0
    out = capsys.readouterr().out
    assert out == zsh_script(build_parser()) and "bashcompinit" in out
