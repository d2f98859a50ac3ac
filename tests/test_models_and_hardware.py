import time

import pytest
import torch

from utils.hardware import detect_hardware, resolve_precision
from utils.models import EMBEDDED, ModelLoadError, embedded_gguf_path, load_base_model, load_tokenizer


def test_embedded_model_loads_offline_and_generates(tokenizer):
    from utils.inference import reply

    assert embedded_gguf_path().name.endswith(".gguf")
    start = time.perf_counter()
    model = load_base_model(EMBEDDED)
    assert time.perf_counter() - start < 10, "the cached checkpoint should load in about a second"
    assert model.config.model_type == "llama" and 130e6 < model.num_parameters() < 140e6
    text = reply(model, tokenizer, [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=20)
    assert text.strip()


def test_pad_token_is_end_of_turn(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.parametrize("facts, name, precision", [
    (dict(cuda=True, cuda_bf16=True, bnb_4bit=True), "cuda-bf16", "bf16"),
    (dict(cuda=True, cuda_bf16=False, bnb_4bit=True), "cuda-fp16", "fp16"),
    (dict(cuda=False, mps=True), "mps", "fp32"),
    (dict(cuda=False, mps=False, cpu_bf16_speedup_x=4.0, bnb_4bit=True), "cpu-bf16", "bf16"),
    (dict(cuda=False, mps=False, cpu_bf16_speedup_x=0.8, bnb_4bit=False), "cpu-fp32", "fp32"),
])
def test_hardware_profiles(facts, name, precision):
    profile = detect_hardware(**facts)
    assert (profile.name, profile.precision) == (name, precision)


def test_bf16_on_a_t4_falls_back_to_fp16_with_one_line(capsys):
    t4 = detect_hardware(cuda=True, cuda_bf16=False, bnb_4bit=True)
    assert resolve_precision(t4, want_bf16=True).fp16
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "fp16" in out[0]


def test_quantized_load_on_cpu_is_4bit():
    profile = detect_hardware()
    if not profile.can_quantize:
        pytest.skip("bitsandbytes 4-bit not usable here")
    model = load_base_model(EMBEDDED, profile, quantize=True)
    assert model.get_memory_footprint() < 250e6
    assert any("4bit" in type(m).__name__ for m in model.modules())


def test_unreachable_hub_id_says_so_in_one_line():
    with pytest.raises(ModelLoadError, match="--model_id embedded") as error:
        load_tokenizer("HuggingFaceTB/SmolLM2-360M-Instruct")
    assert "\n" not in str(error.value)
    assert torch.get_num_threads() >= 1
