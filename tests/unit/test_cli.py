import subprocess
import sys

from bgplb import __version__
from bgplb.cli import main


def test_version_command(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"bgplb {__version__}"


def test_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "bgplb.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "version" in out
