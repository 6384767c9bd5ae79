"""The command line's own text: what `cnnzoo --help` shows a newcomer."""

from __future__ import annotations

import pytest

from cnnzoo.cli import COMMANDS, build_parser


def test_top_level_help_describes_the_tool(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "Classic CNN architectures" in text and "Exit codes" in text
    assert "Each subcommand lives in" not in text  # an internal docstring, not help
    for name in COMMANDS:
        assert name in text
