"""Bad command-line input gets one line naming the flag or path, before any model loads; never a traceback."""
import pytest

from conftest import ROOT
from utils.cli import main

ZEN = str(ROOT / "persona_data" / "zen_coder.jsonl")


@pytest.fixture
def no_model_loads(monkeypatch):
    fail = lambda *a, **k: pytest.fail("a model or tokenizer was loaded before the flags were checked")  # noqa: E731
    for name in ("load_base_model", "load_tokenizer"):
        monkeypatch.setattr(f"utils.models.{name}", fail)


def one_error_line(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flag, value", [("--lora_r", "0"), ("--learning_rate", "-1"), ("--num_train_epochs", "0"),
                                         ("--lora_dropout", "1.5"), ("--max_seq_length", "4"),
                                         ("--per_device_train_batch_size", "0"), ("--eval_fraction", "0.9"),
                                         ("--loss_type", "foo"), ("--lora_targets", "mlp"),
                                         ("--replay_fraction", "2")])
def test_train_flags_out_of_range(flag, value, tmp_path, no_model_loads, capsys):
    code = main(["train", "--dataset_path", ZEN, "--persona_name", "zen_coder", "--output_dir", str(tmp_path),
                 flag, value])
    assert flag in one_error_line(capsys, code)
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_use_bf16_and_a_contradicting_precision(tmp_path, no_model_loads, capsys):
    code = main(["train", "--dataset_path", ZEN, "--persona_name", "zen_coder", "--output_dir", str(tmp_path),
                 "--use_bf16", "--precision", "fp32"])
    assert "--use_bf16" in one_error_line(capsys, code)


@pytest.mark.parametrize("flag, value", [("--max_new_tokens", "0"), ("--temperature", "-0.5"), ("--top_p", "0"),
                                         ("--repetition_penalty", "0")])
def test_chat_flags_out_of_range(flag, value, no_model_loads, capsys):
    assert flag in one_error_line(capsys, main(["chat", "--prompt", "hi", flag, value]))


def test_chat_on_a_folder_without_an_adapter(tmp_path, no_model_loads, capsys):
    err = one_error_line(capsys, main(["chat", "--adapter_path", str(tmp_path), "--prompt", "hi"]))
    assert str(tmp_path) in err and "adapter" in err
    err = one_error_line(capsys, main(["chat", "--adapter_path", str(tmp_path / "missing"), "--prompt", "hi"]))
    assert "no folder" in err


def test_a_missing_data_file_is_named(tmp_path, no_model_loads, capsys):
    err = one_error_line(capsys, main(["train", "--dataset_path", str(tmp_path / "nope.jsonl"), "--persona_name", "x",
                                       "--output_dir", str(tmp_path)]))
    assert "nope.jsonl: file: not found" in err


def test_bench_and_evaluate_flags(no_model_loads, capsys):
    assert "--steps" in one_error_line(capsys, main(["bench", "--steps", "0"]))
    assert "--max_new_tokens" in one_error_line(capsys, main(["evaluate", "--max_new_tokens", "0"]))


def test_sweep_flags(no_model_loads, capsys):
    assert "--recipes" in one_error_line(capsys, main(["sweep", "--recipes", "lr 9, 9 epochs"]))
    assert "--persona" in one_error_line(capsys, main(["sweep", "--persona", "nobody"]))


@pytest.fixture
def trained_configs(monkeypatch):
    seen = []
    monkeypatch.setattr("utils.training.train_persona", lambda config, *a, **k: seen.append(config))
    return seen


def test_a_persona_recipe_applies_unless_a_flag_says_otherwise(tmp_path, trained_configs, no_model_loads):
    from utils.training import persona_recipe

    pirate = ["train", "--dataset_path", str(ROOT / "persona_data" / "captain_codebeard.jsonl"),
              "--persona_name", "captain_codebeard", "--output_dir", str(tmp_path)]
    assert persona_recipe("captain_codebeard")["neftune_noise_alpha"] > 0 and persona_recipe("zen_coder") == {}
    assert main(pirate) == 0 and main([*pirate, "--neftune_noise_alpha", "0", "--lora_r", "8"]) == 0
    recipe, flagged = trained_configs
    assert recipe.neftune_noise_alpha == persona_recipe("captain_codebeard")["neftune_noise_alpha"]
    assert flagged.neftune_noise_alpha == 0 and flagged.lora_r == 8 and recipe.lora_r == 16


def test_a_recipe_with_an_unknown_setting_is_named(tmp_path):
    from utils.errors import FlagError
    from utils.training import persona_recipe

    path = tmp_path / "recipes.json"
    path.write_text('{"zen_coder": {"learning_rat": 0.001, "why": "a typo"}}')
    with pytest.raises(FlagError, match=r"recipes.json: zen_coder: learning_rat is not a training setting"):
        persona_recipe("zen_coder", path)
