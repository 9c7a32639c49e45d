from __future__ import annotations

import subprocess
import sys

from synthcp3d.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand() -> None:
    out = subprocess.run([sys.executable, "-m", "synthcp3d.cli", "--help"], capture_output=True, text=True, check=True)
    for name in SUBCOMMANDS:
        assert name in out.stdout


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
