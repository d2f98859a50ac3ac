"""Architectures beyond Llama through llama.cpp's own tools: tiny Qwen2- and Phi-3-shaped models with random weights,
built from their configs, go adapter -> merge -> GGUF -> llama.cpp, and llama.cpp's logits match transformers'.

Their tokenizer is a small SentencePiece model trained here on the persona data: the converter reads a
`tokenizer.model` for both families (Phi-3-mini ships one), where a byte-level BPE tokenizer must be one it knows.
"""
import json

import numpy as np
import pytest
import torch

from conftest import ROOT

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
TOKENS = [1, 45, 99, 300, 12, 77, 400, 5, 6, 250]


def sentencepiece_tokenizer(folder):
    import sentencepiece

    lines = [json.loads(line)["messages"][-1]["content"] for line in
             (ROOT / "persona_data" / "captain_codebeard.jsonl").read_text().splitlines() if '"messages"' in line]
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(folder / "tokenizer"),
                                             vocab_size=TINY["vocab_size"], model_type="bpe", byte_fallback=True,
                                             minloglevel=2)


def logits_in_llama_cpp(path, adapter=None):
    from utils.llama_cpp import load_gguf

    llm = load_gguf(path, adapter, n_ctx=64, logits_all=True)
    assert not llm.model_params.use_extra_bufts, "weights as the file holds them (AMX repacking crashes)"
    llm.eval(TOKENS)
    return np.array(llm.scores[:len(TOKENS)])


@pytest.fixture(scope="module", params=["qwen2", "phi3"])
def tiny_shipped(request, tmp_path_factory):
    """A tiny random model and a random (non-zero) LoRA adapter on it: base, adapter and merged folders, and the
    logits transformers gives with the adapter and without."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    config = AutoConfig.for_model(request.param, **TINY, tie_word_embeddings=request.param == "qwen2")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder / "base")
    sentencepiece_tokenizer(folder / "base")
    with torch.no_grad():
        without = model(torch.tensor([TOKENS])).logits[0].numpy()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights=False))
    peft_model.save_pretrained(folder / "adapter")
    with torch.no_grad():
        with_adapter = peft_model(torch.tensor([TOKENS])).logits[0].numpy()
    peft_model.merge_and_unload().save_pretrained(folder / "merged")
    (folder / "merged" / "tokenizer.model").write_bytes((folder / "base" / "tokenizer.model").read_bytes())
    return folder, request.param, with_adapter, without


def test_merged_gguf_from_llama_cpps_converter_gives_transformers_logits(tiny_shipped):
    from utils.llama_cpp import convert_model

    folder, _, with_adapter, without = tiny_shipped
    got = logits_in_llama_cpp(convert_model(folder / "merged", folder / "merged-f16.gguf", "f16"))
    assert np.abs(got - with_adapter).max() < 0.01 < np.abs(without - with_adapter).max()
    assert (got.argmax(-1) == with_adapter.argmax(-1)).all()


def test_adapter_gguf_applied_by_llama_cpp_gives_the_merged_logits(tiny_shipped):
    from utils.llama_cpp import convert_adapter, convert_model

    folder, _, with_adapter, _ = tiny_shipped
    base = convert_model(folder / "base", folder / "base-f16.gguf", "f16")
    adapter = convert_adapter(folder / "adapter", folder / "base", folder / "lora-f16.gguf")
    assert np.abs(logits_in_llama_cpp(base, adapter) - with_adapter).max() < 0.01


def test_layer_lessons_find_the_attention_projection_of_any_shape(tiny_shipped):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from utils.blend import compare_combinations, first_lora_layer

    folder, model_type, _, _ = tiny_shipped
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder / "base"), folder / "adapter")
    name, layer = first_lora_layer(peft_model)
    expected = "qkv_proj" if model_type == "phi3" else "q_proj"
    assert name == f"model.layers.0.self_attn.{expected}" and peft_model.base_model.model.get_submodule(name) is layer
    peft_model.load_adapter(str(folder / "adapter"), adapter_name="other")
    assert compare_combinations(peft_model, "default", "other", 0.5, combinations=["cat"])["cat"]["relative_error"] < 1e-4


def test_a_tokenizer_the_converter_does_not_know_fails_in_one_line(tmp_path):
    from transformers import AutoConfig

    from utils.llama_cpp import ExportError, convert_model
    from utils.models import load_tokenizer

    # SmolLM2's byte-level BPE vocabulary under a Qwen2 config: transformers re-splits it with Qwen2's rules,
    # a tokenizer llama.cpp has never seen.
    AutoConfig.for_model("qwen2", **TINY | {"vocab_size": 49152, "architectures": ["Qwen2ForCausalLM"]}).save_pretrained(
        tmp_path)
    load_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ExportError, match=r"^llama.cpp's convert_hf_to_gguf.py failed: .*pre-tokenizer was not "
                                          r"recognized[^\n]*$"):
        convert_model(tmp_path, tmp_path / "x.gguf", "f16")
