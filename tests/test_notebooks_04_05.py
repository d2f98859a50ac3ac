"""Notebooks 04 and 05 run headless, small: 04 trains two personas for a few steps, 05 uses those adapters."""
import json
import re

import pytest

from conftest import ROOT, outputs_text
from run_series import run_notebook


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb04")
    params = {"PERSONAS": ["zen_coder", "master_brindlewood"], "MAX_STEPS": 3, "BATCH_SIZE": 4,
              "MAX_SEQ_LENGTH": 256, "OUTPUT_DIR": str(out / "adapters"), "FIGURES_DIR": str(out)}
    return out, run_notebook(ROOT / "notebooks" / "04_qlora_training.ipynb", params, out_dir=out, solved=True)


def test_notebook_04_trains_every_requested_persona(trained):
    out, executed = trained
    for name in ("zen_coder", "master_brindlewood"):
        adapter = out / "adapters" / f"{name}_final_adapter"
        record = json.loads((adapter / "persona.json").read_text())
        assert record["global_steps"] == 3 and record["loss_history"]["train"]
        assert record["loss_history"]["eval"][0]["step"] == 0, "the curve starts at the untrained eval loss"
    text = outputs_text(executed)
    assert "4-bit NF4 + double quant" in text and "trainable params" in text
    assert "NF4: 4.500 bits per weight; with double quantization: 4.127" in text
    assert "load_best_model_at_end" in text and "group_by_length" in text, "the trainer's settings are shown"
    assert "LoRA weights in {torch.float32}" in text
    state = dict(re.findall(r"(adamw_torch|adamw_bnb_8bit|paged_adamw_8bit)\s+([\d.]+)", text))
    assert float(state["adamw_torch"]) == 8 and float(state["adamw_bnb_8bit"]) < 2.1
    assert "✓ the held-out eval loss fell for every persona" in text
    assert "before" in text and "after" in text and "minutes (estimate)" in text
    assert "correct:" in text, "the exercise's solution passes its check"


def test_notebook_05_uses_the_adapters(trained, tmp_path):
    out, _ = trained
    params = {"ADAPTERS_DIR": str(out / "adapters"), "FIGURES_DIR": str(tmp_path), "MAX_NEW_TOKENS": 24,
              "PROMPTS": ["Any tips for a rainy weekend?", "Why do tests matter?"]}
    executed = run_notebook(ROOT / "notebooks" / "05_inference_and_persona_chat.ipynb", params, out_dir=tmp_path,
                            solved=True)
    assert (tmp_path / "05_loss_curves.png").stat().st_size > 10_000
    text = outputs_text(executed)
    assert re.search(r"adapters on one \S+ base", text) and "merged model:" in text
    drift = float(re.search(r"max \|logit difference\| merged vs base \+ adapter: (\S+)", text).group(1))
    assert drift < 1e-3, "fp32 on a CPU: merged and unmerged agree to rounding"
    assert "the update is smaller than the rounding for" in text and "chat sampling:" in text
    assert "correct:" in text, "the exercise's solution passes its check"
    assert "application/vnd.jupyter.widget-view+json" in text, "the chat widget is displayed"
