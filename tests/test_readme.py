"""The README documents every setting and the Makefile has its two commands."""
from __future__ import annotations

from pathlib import Path

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    missing = [f"GENQ_{name.upper()}" for name in Settings.model_fields if f"`GENQ_{name.upper()}`" not in readme]
    assert missing == []


def test_the_two_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    assert "\nrun:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
