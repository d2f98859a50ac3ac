"""Notebook 01 runs top to bottom headless, saves its figure, shows the validator's reports; its solution is valid."""
import json
import re
from pathlib import Path

import nbformat
from run_series import run_notebook

from utils.data import validate_file

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_author_persona_data.ipynb"


def printed_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_notebook_01_runs_and_shows_the_validator(tmp_path):
    executed = run_notebook(NOTEBOOK, {"FIGURES_DIR": str(tmp_path), "WORK_DIR": str(tmp_path / "work")},
                            out_dir=tmp_path)
    text = printed_text(nbformat.read(executed, as_version=4))

    figure = tmp_path / "01_persona_data_overview.png"
    assert figure.exists() and figure.stat().st_size > 10_000
    assert "4 file(s) checked: 0 error(s), 0 warning(s)" in text
    for report in ("broken.jsonl:2: json: invalid JSON", "broken.jsonl:6: messages[1].role: unknown role 'pirate'",
                   "latin1.jsonl:1: encoding: byte 0xe9 is not UTF-8", "empty.jsonl:1: file: empty",
                   "3 file(s) checked: 9 error(s)"):
        assert report in text
    assert re.search(r"professor_snugglesworth\.jsonl:\d+: messages: warning: \d+ tokens", text)
    assert "not solved yet" in text
    assert "Traceback" not in text


def test_exercise_solution_passes_the_check(tmp_path):
    """The <details> solution, run after the exercise cell, gives 5 valid conversations, each with a system prompt."""
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    exercise = next(c.source for c in cells if c.cell_type == "code" and "def my_persona_conversations" in c.source)
    details = next(c.source for c in cells if c.cell_type == "markdown" and "<details>" in c.source)
    solution = re.search(r"```python\n(.*?)```", details, re.DOTALL).group(1)
    namespace = {}
    exec(exercise + "\n" + solution, namespace)
    conversations = namespace["my_persona_conversations"]()

    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations), encoding="utf-8")
    assert len(conversations) == 5
    assert validate_file(path) == []
    assert all(c["messages"][0]["role"] == "system" and c["messages"][0]["content"] for c in conversations)
