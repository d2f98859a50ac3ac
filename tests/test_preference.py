"""Preference tuning: pairs are validated like persona data, the chat's thumbs make pairs, and notebook 09 runs
headless (small): DPO on the briefly trained pirate, its loss computed by hand, the metrics file written."""
import json
import re

import pytest

from conftest import ROOT, outputs_text
from run_series import run_notebook
from utils.cli import main
from utils.preference import feedback_pairs, pair, save_pairs, validate_pairs

PROMPT = [{"role": "system", "content": "You are Zen Coder."}, {"role": "user", "content": "What is a loop?"}]


def test_pairs_are_validated_with_file_line_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    save_pairs([pair(PROMPT, "Repetition. Then rest.", "A loop repeats code."),
                pair(PROMPT, "Same.", "Same."),
                {"prompt": PROMPT[:1], "chosen": [{"role": "assistant", "content": "x"}], "rejected": []}], path)
    problems = [str(p) for p in validate_pairs(path)]
    assert problems == [f"{path}:2: rejected: is the same reply as chosen: nothing to prefer",
                        f"{path}:3: prompt: must be a list of messages ending with the user's turn",
                        f"{path}:3: rejected: must be [{{\"role\": \"assistant\", \"content\": \"...\"}}]"]


def test_thumbs_up_and_down_on_one_message_make_a_pair(tmp_path):
    ratings = tmp_path / "feedback.jsonl"
    rows = [{"persona": "zen_coder", "prompt": PROMPT, "reply": "Repetition. Then rest.", "good": True},
            {"persona": "zen_coder", "prompt": PROMPT, "reply": "A loop is a control structure.", "good": False},
            {"persona": "pirate", "prompt": PROMPT, "reply": "Arr.", "good": False}]
    ratings.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert feedback_pairs(ratings, "zen_coder") == [pair(PROMPT, rows[0]["reply"], rows[1]["reply"])]
    assert feedback_pairs(ratings, "pirate") == []


@pytest.mark.parametrize("flag, value", [("--beta", "0"), ("--rejected", "the_base")])
def test_prefer_flags_are_checked_before_any_model_loads(pirate_adapter, tmp_path, monkeypatch, capsys, flag, value):
    monkeypatch.setattr("utils.models.load_base_model", lambda *a, **k: pytest.fail("model loaded"))
    code = main(["prefer", "--adapter_path", str(pirate_adapter), flag, value, "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "Traceback" not in err


@pytest.mark.slow
def test_own_loop_pairs_reject_the_adapters_own_looping_replies(pirate_adapter):
    from utils.data import load_conversations
    from utils.evaluate import loops
    from utils.hardware import detect_hardware
    from utils.preference import PreferConfig, load_policy, own_loop_pairs

    model, tokenizer = load_policy(PreferConfig(adapter_path=str(pirate_adapter)), detect_hardware())
    conversations = load_conversations(ROOT / "persona_data" / "captain_codebeard.jsonl")[:12]
    references = {json.dumps(c["messages"][:-1]): c["messages"][-1]["content"] for c in conversations}
    pairs = own_loop_pairs(model, tokenizer, conversations, max_pairs=12, seed=0, max_new_tokens=64)
    for p in pairs:
        assert p["chosen"][0]["content"] == references[json.dumps(p["prompt"])]
        assert loops(p["rejected"][0]["content"]), "only looping replies are rejected"
    assert len({json.dumps(p["prompt"]) for p in pairs}) == len(pairs) <= len(conversations)


@pytest.mark.slow
def test_notebook_09_tunes_checks_the_loss_by_hand_and_writes_the_metrics(pirate_adapter, tmp_path):
    params = {"ADAPTERS_DIR": str(pirate_adapter.parent), "PERSONA": "captain_codebeard",
              "OUTPUT_DIR": str(tmp_path / "dpo"), "PAIRS_PATH": str(tmp_path / "pairs.jsonl"), "MAX_PAIRS": 8,
              "MAX_STEPS": 2, "BETAS": [1.0], "BETA_SWEEP_STEPS": 1, "MAX_PROMPTS": 2, "PRESSURE_ROWS": 2,
              "FEEDBACK_FILE": str(tmp_path / "feedback.jsonl"), "FIGURES_DIR": str(tmp_path)}
    executed = run_notebook(ROOT / "notebooks" / "09_preference_tuning.ipynb", params, out_dir=tmp_path,
                            solved=True)
    text = outputs_text(executed)
    by_hand, trl_loss = map(float, re.search(r"DPO loss by hand ([\d.]+), trl's ([\d.]+)", text).groups())
    assert abs(by_hand - trl_loss) < 1e-3
    assert "adapters on the one base: ['default', 'ref']" in text
    metrics = json.loads((tmp_path / "preference_metrics.json").read_text())["personas"]["captain_codebeard"]
    fields = {"style_accuracy_sft", "style_accuracy_dpo", "in_character_under_pressure_prompted",
              "in_character_under_pressure_fewshot", "in_character_under_pressure_sft",
              "in_character_under_pressure_dpo", "nll_sft", "nll_dpo", "kl_neutral_sft", "kl_neutral_dpo",
              "ppl_general_base", "ppl_general_sft", "ppl_general_dpo"}
    assert fields | {"repetition_rate_sft", "repetition_rate_dpo", "ended_rate_sft", "nll_base"} <= metrics.keys()
    assert "SFT + DPO against its own loops" in text
    assert re.search(r"loops [\d.]+ -> [\d.]+ in 3 rounds", text), "the committed rounds, read and checked"
    record = json.loads((tmp_path / "dpo" / "captain_codebeard_final_adapter" / "persona.json").read_text())
    assert record["method"] == "dpo" and record["dpo_steps"] == 2
    assert "pair(s) from your ratings" in text and "application/vnd.jupyter.widget-view+json" in text
    assert "correct:" in text, "the exercise's solution passes its check"
