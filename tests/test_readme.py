"""The README stays true: the quick start is two commands, the key table comes from TrainConfig."""

from pathlib import Path

from twinflow_min.config_cli import config_table_markdown

REPO = Path(__file__).resolve().parent.parent


def test_readme_config_table_is_current():
    """The README's key table is generated from TrainConfig; a new or changed key must update it."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- config table")
    block = readme[readme.index("\n", start) + 1: readme.index("<!-- end of config table")].strip()
    assert block == config_table_markdown().strip()


def test_readme_quick_start_is_the_two_commands():
    readme = (REPO / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):]
    opening = quick.index("```bash") + len("```bash")
    commands = quick[opening: quick.index("```", opening)].strip().splitlines()
    install_and_toy = "pip install -r requirements.txt && python train.py --toy moons"
    assert commands == [install_and_toy, "python -m pytest"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q -r requirements.txt" in ci
    assert "python3 -m pytest" in ci
