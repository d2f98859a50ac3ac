import time

import pytest
import torch

from utils.errors import FlagError
from utils.hardware import detect_hardware, with_precision
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


@pytest.mark.parametrize("gpu, capability, precision", [
    ("T4", (7, 5), "fp16"), ("V100", (7, 0), "fp16"), ("A100", (8, 0), "bf16"), ("H100", (9, 0), "bf16")])
def test_gpu_precision_comes_from_the_compute_capability(gpu, capability, precision, monkeypatch):
    """torch.cuda.is_bf16_supported() answers True on all four (a T4 emulates bf16): it must not be what decides."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    profile = detect_hardware(bnb_4bit=True)
    assert (profile.device, profile.precision) == ("cuda", precision), gpu
    assert profile.compute_dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


@pytest.mark.parametrize("facts, name, precision", [
    (dict(cuda=False, mps=True), "mps", "fp32"),
    (dict(cuda=False, mps=False, cpu_bf16_speedup_x=4.0, bnb_4bit=True), "cpu-bf16", "bf16"),
    (dict(cuda=False, mps=False, cpu_bf16_speedup_x=0.8, bnb_4bit=False), "cpu-fp32", "fp32"),
])
def test_hardware_profiles(facts, name, precision):
    profile = detect_hardware(**facts)
    assert (profile.name, profile.precision) == (name, precision)


def test_a_precision_flag_changes_the_profile_or_says_why_it_cannot():
    cpu = detect_hardware(cuda=False, mps=False, cpu_bf16_speedup_x=4.0, bnb_4bit=True)
    assert with_precision(cpu, "fp32").compute_dtype == torch.float32 and with_precision(cpu, "auto") is cpu
    t4 = detect_hardware(cuda=True, capability=(7, 5), bnb_4bit=True)
    assert with_precision(t4, "bf16").bf16 and "emulates" in with_precision(t4, "bf16").note
    with pytest.raises(FlagError, match="--precision fp16 needs a CUDA GPU"):
        with_precision(cpu, "fp16")


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
    assert "\n" not in str(error.value) and "offline" in str(error.value)


def test_a_mistyped_local_path_is_named_as_such(tmp_path):
    with pytest.raises(ModelLoadError, match="no folder ./no/such/model"):
        load_tokenizer("./no/such/model")
    with pytest.raises(ModelLoadError, match="holds no loadable model"):
        load_tokenizer(str(tmp_path))
