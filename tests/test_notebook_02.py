"""Notebook 02 runs headless top to bottom, and the checks it prints show its masks agree with trl."""
import re

import nbformat

from conftest import PERSONA_FILES, ROOT
from run_series import run_notebook
from utils.data import load_conversations
from utils.masking import tokenize_with_assistant_mask

NOTEBOOK = ROOT / "notebooks" / "02_chat_templates_and_masking.ipynb"


def printed(notebook) -> str:
    return "\n".join(output["text"] for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []) if output.get("name") == "stdout")


def test_notebook_02_runs_and_its_checks_pass(tmp_path):
    executed = nbformat.read(run_notebook(NOTEBOOK, {"FIGURES_DIR": str(tmp_path)}, out_dir=tmp_path), as_version=4)
    text = printed(executed)
    n = len(load_conversations(ROOT / "persona_data" / "captain_codebeard.jsonl"))
    for check in ["✓ every rendering contains its family's assistant turn",
                  f"✓ the training template renders all {n} conversations exactly like SmolLM2's own",
                  f"✓ hand-made mask == trl's assistant mask for all {n} conversations",
                  "✓ SFTTrainer's labels == hand-made labels",
                  "✓ check_masks: every conversation keeps assistant tokens",
                  "tokens it marks as assistant: 0",
                  "loss when every label is -100: nan",
                  "rows SFTTrainer kept with max_length 32 -> 0",
                  "SFTTrainer with SmolLM2's own template raises",
                  "captain_codebeard.jsonl:1: messages: conversation starting",
                  "naive labels: <|im_end|> targets kept = 0",
                  "Exercise not solved yet"]:
        assert check in text, check
    assert re.search(r"\d+ of \d+ tokens carry loss; <\|im_end\|> targets kept: 2", text)
    assert (tmp_path / "02_assistant_mask.png").stat().st_size > 10_000


def test_exercise_solution_matches_utils_on_every_persona_file(tokenizer):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    solution = next(re.search(r"```python\n(.*?)```", c.source, re.S).group(1)
                    for c in notebook.cells if c.cell_type == "markdown" and "<details>" in c.source)
    namespace = {}
    exec(solution, namespace)
    for path in PERSONA_FILES:
        for conversation in load_conversations(path):
            expected = tokenize_with_assistant_mask(tokenizer, conversation["messages"])
            mask = namespace["assistant_mask_from_ids"](expected["input_ids"], tokenizer)
            assert mask == expected["assistant_masks"], f"{path.name}:{conversation['line']}"
