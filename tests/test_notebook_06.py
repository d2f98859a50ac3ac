"""Notebook 06 runs headless, small: two adapters (the briefly trained pirate and a copy of it under a second name,
so that there is a pair to blend), two prompts per persona, short replies."""
import json
import shutil


from conftest import ROOT, outputs_text
from run_series import run_notebook

METRIC_KEYS = {"style_accuracy_adapter", "style_accuracy_prompted", "style_accuracy_base", "nll_adapter", "nll_base",
               "kl_neutral", "ppl_general_base", "ppl_general_adapter", "rouge_l_adapter", "rouge_l_prompted",
               "rouge_l_base"}


def pirate_and_twin(pirate_adapter, folder):
    shutil.copytree(pirate_adapter, folder / pirate_adapter.name)
    twin = folder / "zen_coder_final_adapter"
    shutil.copytree(pirate_adapter, twin)
    record = json.loads((twin / "persona.json").read_text()) | {"persona": "zen_coder"}
    (twin / "persona.json").write_text(json.dumps(record))
    return folder


def test_notebook_06_evaluates_blends_and_chats(pirate_adapter, tmp_path):
    params = {"ADAPTERS_DIR": str(pirate_and_twin(pirate_adapter, tmp_path / "adapters")), "MAX_PROMPTS": 2,
              "MAX_NEW_TOKENS": 8, "BLEND_WEIGHTS": [0.0, 0.5, 1.0], "BLEND_PROMPTS": 2,
              "TRAP_COMBINATIONS": ["linear", "cat"], "FIGURES_DIR": str(tmp_path)}
    executed = run_notebook(ROOT / "notebooks" / "06_evaluate_and_blend.ipynb", params, out_dir=tmp_path,
                            solved=True)

    report = json.loads((tmp_path / "persona_metrics.json").read_text())
    assert set(report["personas"]) == {"captain_codebeard", "zen_coder"}
    assert all(METRIC_KEYS <= metrics.keys() for metrics in report["personas"].values())
    assert report["classifier_accuracy_on_references"] >= 0.9 and report["blend"]["weights"] == [0.0, 0.5, 1.0]
    for figure in ("06_style_accuracy.png", "06_persona_markers.png", "06_blend_sweep.png"):
        assert (tmp_path / figure).stat().st_size > 10_000, figure
    text = outputs_text(executed)
    assert "the judge reads: use a good _ with a steady hand, me hearty, and a _." in text
    assert "the whole difference is the cross terms" in text
    assert "shared prefix once" in text, "the shared-prefix KV cache is checked against plain left padding"
    assert "master_brindlewood: loops" in text and "(mean of 3 runs each)" in text, "NEFTune decided by three seeds"
    assert "DFT loss, last not best: NLL +" in text, "the DFT rows are checked against the base"
    assert "master_brindlewood, lr 1e-3 vs 2e-3 (NEFTune 5 both): loops" in text, "the trade-off is checked"
    assert "zen_coder, 3 epochs vs 2: loops" in text, "the third epoch is checked against two"
    assert "zen_coder, 2 epochs with replay vs without: loops" in text, "replay is checked against no replay"
    assert "master_brindlewood, attention only vs every linear layer (NEFTune 5 both): loops" in text
    assert "application/vnd.jupyter.widget-view+json" in text, "the chat with its blend slider is displayed"
    assert "blend_70_captain_codebeard_30_zen_coder:" in text
    assert "correct: your blend is exactly" in text, "the exercise's solution passes its check"
