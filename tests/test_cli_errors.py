"""Every command's error line is one unwrapped string (a long path with its line and field can be copied and
matched) and prints the user's text as typed, never as rich markup."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from chatloom.cli import app

BAD_LINE = '{"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}\n'


@pytest.fixture
def deep_bad_file(tmp_path):
    folder = tmp_path / ("a_rather_long_folder_name_" * 4) / "[bold]not markup"
    folder.mkdir(parents=True)
    path = folder / "conversations.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n' + BAD_LINE, encoding="utf-8")
    return path


@pytest.mark.parametrize("argv", [["data", "stats"], ["train", "sft", "--model", "tiny", "--out", "unused", "--data"]])
def test_an_error_names_file_line_and_field_on_one_line(deep_bad_file, argv):
    res = CliRunner().invoke(app, [*argv, str(deep_bad_file)], env={"COLUMNS": "60"})
    assert res.exit_code == 2, res.output
    error_lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, res.output
    assert f"{deep_bad_file}:2: " in error_lines[0] and len(error_lines[0]) > 60
    assert "role" in error_lines[0].split(f"{deep_bad_file}:2: ", 1)[1]
