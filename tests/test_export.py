"""Shipping a persona: notebook 08 packages, merges and converts the pirate adapter once; the tests check what it made.

The merge and llama.cpp round trips compare greedy replies inside the notebook (its cells assert them, the tests read
its printed checks); the tests re-check the artifacts independently where that is cheap (files, card header, GGUF
metadata, Modelfiles against llama.cpp's own template engine).
"""
import json
import re

import pytest
import torch

from conftest import ROOT, outputs_text
from run_series import run_notebook

PROMPTS = ["How do I name my variables?", "Why do tests matter?", "Any tips for a rainy weekend?"]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def shipped(pirate_adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("nb08")
    params = {"ADAPTER_PATH": str(pirate_adapter), "OUT_DIR": str(out / "shipped"), "FIGURES_DIR": str(out),
              "GGUF_TYPES": ["f16", "q8_0", "q4_k_m"], "PROMPTS": PROMPTS, "MAX_NEW_TOKENS": NEW_TOKENS}
    executed = run_notebook(ROOT / "notebooks" / "08_ship_a_persona.ipynb", params, out_dir=out, solved=True)
    return out, outputs_text(executed)


def test_notebook_08_runs_top_to_bottom(shipped):
    out, text = shipped
    assert (out / "08_sizes.png").stat().st_size > 10_000
    assert "correct: the rows are back in transformers' order" in text, "the exercise's solution passes its check"


def test_package_folder_holds_adapter_tokenizer_record_and_card(shipped):
    from huggingface_hub import ModelCard

    package = shipped[0] / "shipped" / "captain_codebeard-lora"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
            "persona.json", "system_prompt.txt", "README.md"} <= {p.name for p in package.iterdir()}
    record = json.loads((package / "persona.json").read_text())
    assert record["settings"]["lora_r"] == 16 and record["metrics"]["final_train_loss"] > 0
    assert (package / "system_prompt.txt").read_text().strip() == record["system_prompt"]
    config = json.loads((package / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct", "a hub id, not a local path"

    card = ModelCard.load(package / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "peft" and card.data.license == "apache-2.0"
    assert {"lora", "persona", "captain_codebeard"} <= set(card.data.tags)
    assert record["system_prompt"] in card.text and "from_pretrained" in card.text
    assert f"{record['global_steps']} steps" in card.text and "final_train_loss" in card.text and "not evaluated yet" in card.text


def test_card_reports_evaluation_figures_when_present(pirate_adapter, tmp_path):
    from utils.export import package_adapter

    metrics = tmp_path / "persona_metrics.json"
    metrics.write_text(json.dumps({"personas": {"captain_codebeard": {"style_accuracy_adapter": 0.95, "markers": {}}},
                                   "adapters": {"captain_codebeard": str(pirate_adapter.resolve())}}))
    package = package_adapter(pirate_adapter, tmp_path / "lora", repo_id="me/pirate", metrics_file=metrics)
    text = (package / "README.md").read_text()
    assert "| style_accuracy_adapter | 0.95 |" in text and "not evaluated yet" not in text
    assert 'from_pretrained("me/pirate")' in text


def test_merged_model_loads_without_peft_and_replies_like_base_plus_adapter(shipped):
    from transformers import AutoModelForCausalLM

    out, text = shipped
    # The notebook compared greedy tokens of the merged folder (loaded with plain transformers) and base + adapter.
    assert f"same {NEW_TOKENS} greedy tokens as base + adapter for all {len(PROMPTS)} prompts" in text
    by_hand = re.search(r"max \|W \+ \(α/r\)·B·A − merged W\| = (\S+)", text)
    assert float(by_hand.group(1)) < 1e-5, "the merge adds (α/r)·B·A to each weight"
    merged_dir = out / "shipped" / "captain_codebeard-merged"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert not hasattr(merged, "peft_config") and "lora" not in str(merged).lower()
    record = json.loads((merged_dir / "persona.json").read_text())
    assert record["persona"] == "captain_codebeard" and (merged_dir / "README.md").exists()


def test_gguf_files_are_llama_cpps_own(shipped):
    import gguf

    out, text = shipped
    merged_dir = out / "shipped" / "captain_codebeard-merged"
    reader = gguf.GGUFReader(merged_dir / "gguf" / "captain_codebeard-f16.gguf")
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm", "the converter recognised the tokenizer"
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == 2
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    q8 = {t.tensor_type.name for t in gguf.GGUFReader(merged_dir / "gguf" / "captain_codebeard-q8_0.gguf").tensors}
    q4 = {t.tensor_type.name for t in gguf.GGUFReader(merged_dir / "gguf" / "captain_codebeard-q4_k_m.gguf").tensors}
    assert q8 == {"Q8_0", "F32"} and {"Q4_K", "Q6_K"} <= q4
    card = (merged_dir / "README.md").read_text()
    assert "llama-cli -m gguf/" in card and "ollama create" in card
    assert "llama: k_proj rows are reordered per head" in text
    assert "34/32 = 8.5" in text and "144/256 = 4.5" in text, "bits per weight from the block table"
    step = re.search(r"q8_0: max \|error\| \S+, at most ([\d.]+) of its block's step", text)
    assert float(step.group(1)) <= 0.6


def test_llama_cpp_scores_transformers_replies_as_transformers_does(shipped):
    _, text = shipped
    checks = {kind: tuple(map(float, numbers)) for kind, *numbers in re.findall(
        r"llama.cpp (\w+): max \|Δ logit\| ([\d.]+); same top token at ([\d.]+)% of (\d+) positions; "
        r"ends the turn where transformers did (\d+)/(\d+)", text)}
    assert set(checks) == {"f16", "q8_0", "q4_k_m"}, "the notebook compared each file in llama.cpp with transformers"
    drift, same, positions, stops, stopped = checks["f16"]
    assert drift < 0.25 and same >= 97 and stops == stopped
    assert positions >= len(PROMPTS) and checks["q8_0"][1] >= 85
    adapter = re.search(r"base GGUF \+ adapter GGUF: max \|Δ logit\| [\d.]+; same top token at ([\d.]+)%", text)
    assert float(adapter.group(1)) >= 97


def test_modelfiles_prompt_as_llama_cpp_does(shipped):
    from utils.llama_cpp import greedy_reply, load_gguf, rendered_prompt
    from utils.ollama import read_modelfile, render

    out, text = shipped
    assert "the Modelfile's template renders all" in text
    merged = read_modelfile(out / "shipped" / "captain_codebeard-merged" / "gguf" / "Modelfile")
    package = out / "shipped" / "captain_codebeard-lora"
    system = (package / "system_prompt.txt").read_text().strip()
    assert merged["FROM"] == "./captain_codebeard-q4_k_m.gguf" and merged["SYSTEM"] == system
    assert 'stop "<|im_end|>"' in merged["PARAMETER"] and "temperature 0.7" in merged["PARAMETER"]
    adapter = read_modelfile(package / "gguf" / "Modelfile")
    assert adapter["FROM"] == "./base-f16.gguf" and adapter["ADAPTER"] == "./captain_codebeard-lora-f16.gguf"
    # Independently of the notebook: a new prompt, through the adapter variant, as llama.cpp renders it.
    llm = load_gguf(package / "gguf" / "base-f16.gguf", adapter=package / "gguf" / "captain_codebeard-lora-f16.gguf")
    conversation = [{"role": "system", "content": system}, {"role": "user", "content": "Ahoy! What is a loop?"}]
    assert render(adapter["TEMPLATE"], system, "Ahoy! What is a loop?") == rendered_prompt(llm, conversation)
    reply, finish = greedy_reply(llm, conversation, 8)
    assert reply and finish in ("stop", "length")


def test_missing_llama_cpp_tools_fail_in_one_line_before_any_model_loads(pirate_adapter, tmp_path, monkeypatch,
                                                                          capsys):
    import utils.llama_cpp
    from utils.cli import main

    monkeypatch.setattr(utils.llama_cpp, "TOOLS_DIR", tmp_path / "nowhere")
    assert main(["merge", "--adapter_path", str(pirate_adapter), "--out", str(tmp_path / "m"), "--gguf", "f16"]) == 2
    error = capsys.readouterr().err
    assert "llama.cpp's converters are not in" in error and "make setup" in error and error.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_cli_packages_and_fails_to_push_offline_in_one_line(pirate_adapter, tmp_path, capsys):
    from utils.cli import build_parser, main

    out = tmp_path / "lora"
    assert main(["package", "--adapter_path", str(pirate_adapter), "--out", str(out),
                 "--push_to_hub", "someone/pirate-lora"]) == 2
    assert (out / "README.md").exists() and 'from_pretrained("someone/pirate-lora")' in (out / "README.md").read_text()
    captured = capsys.readouterr()
    assert "adapter_model.safetensors" in captured.out
    assert captured.err.startswith("error: could not push") and captured.err.count("\n") == 1
    args = build_parser().parse_args(["merge", "--adapter_path", "a", "--out", "b", "--gguf", "f16", "--gguf", "q8_0",
                                      "--overwrite"])
    assert args.gguf == ["f16", "q8_0"] and args.overwrite


def test_shipping_never_writes_over_a_folder_unless_asked(pirate_adapter, tmp_path, capsys):
    from utils.cli import main

    out = tmp_path / "lora"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["package", "--adapter_path", str(pirate_adapter), "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err and not (out / "README.md").exists()
    assert main(["package", "--adapter_path", str(pirate_adapter), "--out", str(out), "--overwrite"]) == 0
    assert (out / "README.md").exists() and (out / "notes.txt").read_text() == "mine"


def test_a_card_reports_evaluation_figures_only_for_the_adapter_evaluated(pirate_adapter, tmp_path):
    from utils.card import final_metrics
    from utils.adapters import read_record

    report = tmp_path / "persona_metrics.json"
    record = read_record(pirate_adapter)
    for evaluated, expected in ((pirate_adapter, True), (tmp_path / "another_captain_codebeard", False)):
        report.write_text(json.dumps({"personas": {"captain_codebeard": {"style_accuracy_adapter": 0.5}},
                                      "adapters": {"captain_codebeard": str(evaluated.resolve())}}))
        assert ("style_accuracy_adapter" in final_metrics(record, pirate_adapter, report)) is expected


def test_reports_name_adapters_inside_the_working_directory_relative_to_it(tmp_path, monkeypatch):
    from utils.adapters import report_path

    (tmp_path / "trained_adapters" / "zen_coder_final_adapter").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "trained_adapters")
    assert report_path("zen_coder_final_adapter") == "zen_coder_final_adapter"
    assert report_path(tmp_path) == str(tmp_path.resolve())


def test_the_card_names_the_layers_each_lora_target_choice_adapts():
    from utils.card import lora_layers

    assert lora_layers("all-linear") == "on every linear layer"
    assert lora_layers("attention") == "on the q, k, v, o projections"
