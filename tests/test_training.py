import json

import pytest
from safetensors.torch import load_file

from conftest import ROOT
from utils.cli import build_parser, config_from, main
from utils.inference import attach_adapters, generate_token_ids, with_system_prompt
from utils.models import load_base_model
from utils.adapters import AdapterExistsError, read_record
from utils.training import TrainConfig, train_persona

PROMPTS = ["How should I organise my week?", "How do I name my variables?", "Why do tests matter?",
           "Any tips for a rainy weekend?"]


def mean(values):
    return sum(values) / len(values)


def test_training_lowers_loss_and_saves_a_complete_adapter(pirate_adapter):
    files = {p.name for p in pirate_adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "persona.json"} <= files
    record = read_record(pirate_adapter)
    losses = [e["loss"] for e in record["loss_history"]["train"]]
    assert record["global_steps"] == 24 and len(losses) == 24
    assert mean(losses[-4:]) < 0.92 * mean(losses[:4])
    assert record["system_prompt"].startswith("You are Captain Codebeard")
    evals = record["loss_history"]["eval"]
    assert evals[0]["step"] == 0 and evals[-1]["eval_loss"] < evals[0]["eval_loss"], "eval from step 0, falling"
    assert record["best_checkpoint"] is None, "the final weights are kept unless --keep_best"
    assert record["best_eval_loss"] == min(e["eval_loss"] for e in evals)


def test_adapter_reloads_changes_the_reply_and_stops_at_end_of_turn(pirate_adapter, tokenizer):
    model = attach_adapters(load_base_model(), {"captain_codebeard": pirate_adapter})
    system_prompt = read_record(pirate_adapter)["system_prompt"]
    conversations = [with_system_prompt([{"role": "user", "content": p}], system_prompt) for p in PROMPTS]
    tuned = generate_token_ids(model, tokenizer, conversations, max_new_tokens=200)
    with model.disable_adapter():
        base = generate_token_ids(model, tokenizer, conversations, max_new_tokens=200)
    assert all(t != b for t, b in zip(tuned, base))
    # A short training run may loop on a prompt; one whose labels lost <|im_end|> would end on none.
    ended = sum(row[-1] == tokenizer.eos_token_id for row in tuned)
    assert ended >= len(PROMPTS) / 2, f"the trained adapter ended {ended}/{len(PROMPTS)} replies with <|im_end|>"


def test_qlora_4bit_training_reaches_every_lora_layer(tmp_path):
    from utils.hardware import detect_hardware

    if not detect_hardware().can_quantize:
        pytest.skip("bitsandbytes 4-bit not usable here")
    config = TrainConfig(dataset_path=str(ROOT / "persona_data" / "zen_coder.jsonl"), persona_name="zen_coder",
                         output_dir=str(tmp_path), use_quantization=True, max_steps=6, max_seq_length=192,
                         learning_rate=1e-3, per_device_train_batch_size=4, save_steps=1000)
    adapter = train_persona(config)
    record = read_record(adapter)
    assert record["quantized"]
    evals = [e["eval_loss"] for e in record["loss_history"]["eval"]]
    assert len(evals) == 2 and evals[-1] < evals[0], "the held-out loss fell from its value at step 0"
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert len(lora_b) == 30 * 7, "all 7 linear projections in all 30 layers carry LoRA"
    assert all(v.abs().sum() > 0 for v in lora_b.values()), "B starts at zero: non-zero means gradients arrived"


def test_existing_adapter_is_never_replaced_silently(pirate_adapter):
    config = TrainConfig(dataset_path=str(ROOT / "persona_data" / "captain_codebeard.jsonl"),
                         persona_name="captain_codebeard", output_dir=str(pirate_adapter.parent))
    with pytest.raises(AdapterExistsError, match="--overwrite"):
        train_persona(config)


def test_bad_data_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    monkeypatch.setattr("utils.models.load_base_model", lambda *a, **k: pytest.fail("model loaded"))
    code = main(["train", "--dataset_path", str(bad), "--persona_name", "x", "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:1: messages: no assistant turn" in err and "Traceback" not in err


def test_train_flags_round_trip():
    argv = ["train", "--model_id", "embedded", "--dataset_path", "d.jsonl", "--persona_name", "p",
            "--output_dir", "out", "--max_seq_length", "256", "--use_quantization", "--precision", "bf16",
            "--num_train_epochs", "2", "--max_steps", "7", "--lora_r", "8", "--lora_alpha", "16",
            "--lora_dropout", "0.1", "--overwrite", "--resume"]
    args = build_parser().parse_args(argv)
    assert (args.max_seq_length, args.use_quantization, args.precision, args.num_train_epochs, args.max_steps,
            args.lora_r, args.lora_alpha, args.lora_dropout, args.overwrite, args.resume) == \
           (256, True, "bf16", 2.0, 7, 8, 16, 0.1, True, True)
    defaults = config_from(build_parser().parse_args(["train", "--dataset_path", "d", "--persona_name", "p"]),
                           TrainConfig)
    assert (defaults.model_id, defaults.max_seq_length, defaults.lora_r) == ("embedded", TrainConfig.max_seq_length, 16)


def test_chat_flags_round_trip():
    args = build_parser().parse_args(["chat", "--adapter_path", "a", "--prompt", "hi", "--max_new_tokens", "50",
                                      "--temperature", "0.2", "--merge_adapter", "--use_quantization"])
    assert (args.adapter_path, args.prompt, args.max_new_tokens, args.temperature, args.merge_adapter,
            args.use_quantization, args.model_id) == ("a", "hi", 50, 0.2, True, True, None)


def test_chat_command_prints_one_reply(pirate_adapter, capsys):
    code = main(["chat", "--adapter_path", str(pirate_adapter), "--prompt", "Any advice on naming things?",
                 "--temperature", "0", "--max_new_tokens", "40"])
    assert code == 0 and capsys.readouterr().out.strip()


def test_record_is_json(pirate_adapter):
    record = json.loads((pirate_adapter / "persona.json").read_text())
    assert record["settings"]["persona_name"] == "captain_codebeard"


def test_the_adapter_ships_the_base_template_and_the_callers_tokenizer_is_untouched(pirate_adapter, tokenizer):
    from transformers import AutoTokenizer

    from utils.masking import CHATML_TRAINING_TEMPLATE

    saved = AutoTokenizer.from_pretrained(pirate_adapter)
    assert "{% generation %}" not in saved.chat_template, "the training-only markers stay out"
    assert saved.chat_template == tokenizer.chat_template != CHATML_TRAINING_TEMPLATE


def test_target_checks_hold_and_fail_where_they_should():
    from utils.evaluate import check_targets

    good = {"style_accuracy_adapter": 0.95, "style_accuracy_base": 0.0, "style_accuracy_prompted": 0.3,
            "style_accuracy_fewshot": 0.5, "nll_adapter": 3.0, "nll_base": 4.0, "ppl_general_adapter": 20.0,
            "ppl_general_base": 19.0, "repetition_rate_adapter": 0.0}
    assert all(check_targets({"personas": {"p": good}})["p"].values())
    bad = good | {"style_accuracy_fewshot": 0.7, "nll_adapter": 3.5, "repetition_rate_adapter": 0.1}
    failed = {t for t, held in check_targets({"personas": {"p": bad}})["p"].items() if not held}
    assert failed == {"adapter >= 0.3 above prompted and few-shot", "NLL >= 25% below base", "repetition <= 0.05"}


def test_replay_rows_are_the_base_models_plain_replies_without_loops():
    from utils.evaluate import loops
    from utils.training import replay_rows

    rows = replay_rows(0.25, 200, seed=0)
    assert len(rows) == 50 and rows == replay_rows(0.25, 200, seed=0) and replay_rows(0.0, 200, seed=0) == []
    assert all(m["role"] != "system" for row in rows for m in row["messages"]), "replay asks no persona"
    assert not any(loops(row["messages"][-1]["content"]) for row in rows)
