"""The T4 rehearsal, as far as a CPU takes it: the random-weight model builder, the T4 settings it forces, the
report it writes, and a one-line refusal without a GPU."""
import json

import torch

import t4_rehearsal
from utils import random_models
from utils.hardware import detect_hardware


def test_a_random_weight_model_of_a_given_shape_loads_like_a_checkpoint(tmp_path, monkeypatch):
    from utils.models import load_base_model, load_tokenizer

    monkeypatch.setattr(random_models, "CACHE_DIR", tmp_path)
    monkeypatch.setitem(random_models.ARCHITECTURES, "tiny-llama", dict(
        model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True))
    path = random_models.random_checkpoint("tiny-llama")
    assert random_models.random_checkpoint("tiny-llama") == path, "built once"
    model, tokenizer = load_base_model(str(path)), load_tokenizer(str(path))
    assert model.config.hidden_size == 64 and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    assert model(ids).logits.shape[-1] == 49152


def test_the_forced_capability_makes_any_gpu_decide_as_a_t4(monkeypatch):
    monkeypatch.setenv("PERSONA_LORA_CUDA_CAPABILITY", t4_rehearsal.T4["PERSONA_LORA_CUDA_CAPABILITY"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))  # an H100 underneath
    assert detect_hardware(bnb_4bit=True).precision == "fp16"


def test_the_report_names_every_notebook_and_the_refusal_is_one_line(capsys):
    from run_series import series

    results = {p.stem: {"status": "ok", "peak_gib": 1.0, "seconds": 1} for p in series()}
    report = json.loads(json.dumps(t4_rehearsal.report("Tesla T4", "SmolLM2-1.7B shape", results)))
    assert report["precision"] == "fp16" and set(report["notebooks"]) == {p.stem for p in series()}
    if not torch.cuda.is_available():
        assert t4_rehearsal.main() == 2
        assert capsys.readouterr().err.count("\n") == 1
