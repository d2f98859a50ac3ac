"""Shipping a persona: notebook 08 packages, merges and exports the pirate adapter once; the tests check what it made.

The merge and f16 GGUF round trips compare greedy replies inside the notebook (its cells assert them, the tests read
its printed checks); the tests re-check the artifacts independently where that is cheap (files, card header, GGUF
metadata and weights). q8_0 is checked without loading it back in transformers, which costs ~15 s a file here.
"""
import json
import re

import numpy as np
import pytest
import torch

from conftest import ROOT, outputs_text
from run_series import run_notebook

PROMPTS = ["How do I name my variables?", "Why do tests matter?"]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def shipped(pirate_adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("nb08")
    params = {"ADAPTER_PATH": str(pirate_adapter), "OUT_DIR": str(out / "shipped"), "FIGURES_DIR": str(out),
              "GGUF_TYPES": ["f16"], "PROMPTS": PROMPTS, "MAX_NEW_TOKENS": NEW_TOKENS}
    executed = run_notebook(ROOT / "notebooks" / "08_ship_a_persona.ipynb", params, out_dir=out, solved=True)
    return out, outputs_text(executed)


def test_notebook_08_runs_top_to_bottom(shipped):
    out, text = shipped
    assert (out / "08_sizes.png").stat().st_size > 10_000
    assert "correct: the k_proj rows are back" in text, "the exercise's solution passes its check"


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


def test_gguf_f16_round_trips_through_transformers(shipped):
    import gguf

    out, text = shipped
    merged_dir = out / "shipped" / "captain_codebeard-merged"
    reader = gguf.GGUFReader(merged_dir / "gguf" / "captain_codebeard-f16.gguf")
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == 2
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert "llama-cli -m gguf/captain_codebeard-f16.gguf" in (merged_dir / "README.md").read_text()
    # The notebook loaded the file back with transformers (gguf_file=, its own tokenizer) and compared greedy tokens.
    same = re.search(r"GGUF f16: same (\d+) greedy tokens as the merged model for (\d+/\d+) prompts, "
                     r"max \|Δ logit\| ([\d.]+)", text)
    assert same.group(1, 2) == (str(NEW_TOKENS), f"{len(PROMPTS)}/{len(PROMPTS)}") and float(same.group(3)) < 0.1


def test_gguf_q8_0_holds_the_merged_weights_in_8_bit_blocks(shipped, tmp_path):
    import gguf
    from safetensors.numpy import load_file
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from utils.gguf_export import export_gguf

    merged_dir = shipped[0] / "shipped" / "captain_codebeard-merged"
    q8 = export_gguf(merged_dir, tmp_path / "pirate-q8_0.gguf", "q8_0")
    tensors = {t.name: t for t in gguf.GGUFReader(q8).tensors}
    assert {t.tensor_type.name for t in tensors.values()} == {"Q8_0", "F32"}
    assert q8.stat().st_size < 0.6 * (merged_dir / "gguf" / "captain_codebeard-f16.gguf").stat().st_size

    # Read back as transformers' loader does (dequantize, undo the q/k reordering): within q8_0's rounding.
    k_proj = tensors["blk.3.attn_k.weight"]
    stored = gguf.dequantize(k_proj.data, k_proj.tensor_type)
    undo = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    restored = undo.process(stored, k_proj.name).weights
    original = load_file(merged_dir / "model.safetensors")["model.layers.3.self_attn.k_proj.weight"]
    assert np.abs(restored - original).max() < np.abs(original).max() / 100


def test_llama_cpp_permutation_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from utils.gguf_export import permute_for_llama_cpp

    weight = np.arange(192 * 4, dtype=np.float32).reshape(192, 4)  # k_proj-like: 3 heads of 64 rows
    undo = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    restored = undo.process(permute_for_llama_cpp(weight, 3), "blk.0.attn_k.weight").weights
    assert np.array_equal(restored, weight)


def test_unsupported_architecture_is_named_in_one_clear_error(tmp_path):
    from utils.gguf_export import ExportError, export_gguf

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ExportError, match=r"supports model_type \['llama'\].*not 'gpt2'"):
        export_gguf(tmp_path, tmp_path / "x.gguf")


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
