"""Notebooks 04 and 05 run headless, small: 04 trains two personas for a few steps, 05 uses those adapters."""
import json

import pytest

from conftest import ROOT, outputs_text
from run_series import run_notebook


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb04")
    params = {"PERSONAS": ["zen_coder", "master_brindlewood"], "MAX_STEPS": 3, "BATCH_SIZE": 4,
              "MAX_SEQ_LENGTH": 256, "OUTPUT_DIR": str(out / "adapters"), "FIGURES_DIR": str(out)}
    return out, run_notebook(ROOT / "notebooks" / "04_qlora_training.ipynb", params, out_dir=out)


def test_notebook_04_trains_every_requested_persona(trained):
    out, executed = trained
    for name in ("zen_coder", "master_brindlewood"):
        adapter = out / "adapters" / f"{name}_final_adapter"
        record = json.loads((adapter / "persona.json").read_text())
        assert record["global_steps"] == 3 and record["loss_history"]["train"]
    text = outputs_text(executed)
    assert "4-bit NF4 + double quant" in text and "trainable params" in text
    assert "not solved yet" in text, "the exercise check runs (unsolved) without failing"


def test_notebook_05_uses_the_adapters(trained, tmp_path):
    out, _ = trained
    params = {"ADAPTERS_DIR": str(out / "adapters"), "FIGURES_DIR": str(tmp_path), "MAX_NEW_TOKENS": 24,
              "PROMPTS": ["Any tips for a rainy weekend?", "Why do tests matter?"]}
    executed = run_notebook(ROOT / "notebooks" / "05_inference_and_persona_chat.ipynb", params, out_dir=tmp_path)
    assert (tmp_path / "05_loss_curves.png").stat().st_size > 10_000
    text = outputs_text(executed)
    assert "adapters on one base" in text and "merged model:" in text
    assert "application/vnd.jupyter.widget-view+json" in text, "the chat widget is displayed"
