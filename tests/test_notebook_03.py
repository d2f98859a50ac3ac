"""Notebook 03 runs headless, proves its four claims, saves its figure; its exercise solutions pass their checks."""
import re

import nbformat
import pytest

from conftest import ROOT
from run_series import run_notebook

NOTEBOOK = ROOT / "notebooks" / "03_lora_from_scratch.ipynb"


def printed(notebook) -> str:
    return "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb03")
    params = {"FIGURES_DIR": str(out), "TRAIN_STEPS": 2, "MAX_TRAIN_TOKENS": 96}
    return out, nbformat.read(run_notebook(NOTEBOOK, params, out_dir=out), as_version=4)


def test_notebook_proves_each_claim_and_saves_the_figure(executed):
    out, notebook = executed
    text = printed(notebook)
    assert "max |logits - base logits| = 0.000e+00" in text
    assert "your LoRALayer vs utils.lora.LoRALinear" in text
    first, last = map(float, re.search(r"loss: step 1 ([\d.]+) -> step 100 [\d.]+ -> step 300 ([\d.]+)", text).groups())
    assert last < 0.01 * first, "the hand-written layer learns"
    for proof in ("(1) B = 0 leaves the model unchanged", "(2) hand-written LoRA == peft LoRA",
                  "(3) merged == unmerged", "(4) training changed only A and B"):
        assert f"Proof {proof}" in text
    assert "trainable params: 4,884,480" in text  # peft's own report for r=16 on SmolLM2-135M
    for model in ("SmolLM2-360M", "SmolLM2-1.7B", "Qwen2.5-1.5B", "Phi-3-mini"):
        assert model in text
    assert "Exercise (a): not solved yet" in text and "Exercise (b): not solved yet" in text
    figure = out / "03_lora_params_vs_rank.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exercise_solutions_pass_their_checks(tmp_path, capsys):
    """Run the parameters, the imports and the exercises, each exercise followed by its <details> solution."""
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    parameters = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    first_exercise = next(i for i, c in enumerate(cells) if c.source.startswith("## Exercise"))
    imports = next(c.source for c in cells if "from utils.lora import" in c.source)
    sources = [cells[parameters].source, f"FIGURES_DIR = {str(tmp_path)!r}", imports]
    for i in range(first_exercise, len(cells)):
        if cells[i].cell_type != "code":
            continue
        sources.append(cells[i].source)
        if "# your code here" in cells[i].source:  # the solution redefines the function left unsolved
            solution = next(c.source for c in cells[i:] if c.cell_type == "markdown" and "<details>" in c.source)
            sources.append(re.search(r"```python\n(.*?)```", solution, re.S).group(1))
    namespace = {}
    exec("from pathlib import Path", namespace)
    for source in sources:
        exec(source, namespace)
    text = capsys.readouterr().out
    assert "Exercise (a): solved" in text and "Exercise (b): solved" in text
