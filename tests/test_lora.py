"""The hand-written LoRA of utils/lora.py: notebook 03's four proofs at small scale, and counting without weights."""
import copy
import math
import socket

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, Phi3Config

from conftest import ROOT
from utils.data import load_conversations
from utils.masking import labels_from_mask, tokenize_with_assistant_mask
from utils.lora import LLAMA_TARGETS, LoRALinear, count_lora_parameters, inject_lora, lora_layers, merge_lora
from utils.models import load_base_model

R, ALPHA = 8, 16
PROMPT = [{"role": "user", "content": "How should I name my variables?"}]


def fp32_model():
    return load_base_model("embedded", dtype=torch.float32).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def prompt(tokenizer):
    return tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]


@pytest.fixture(scope="module")
def base_logits(prompt):
    return logits(fp32_model(), prompt)


@pytest.fixture(scope="module")
def random_lora(prompt):
    """The embedded model with LoRA injected and B made non-zero, and its logits."""
    torch.manual_seed(0)
    model = inject_lora(fp32_model(), LLAMA_TARGETS, r=R, alpha=ALPHA)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            nn.init.normal_(layer.lora_B, std=0.02)
    return model, logits(model, prompt)


def test_lora_linear_starts_as_its_base_and_merges_exactly():
    base = nn.Linear(32, 48)
    layer = LoRALinear(base, r=4, alpha=8)
    x = torch.randn(5, 32)
    assert layer.lora_A.shape == (4, 32) and layer.lora_B.shape == (48, 4) and layer.scaling == 2.0
    assert torch.all(layer.lora_B == 0) and 0 < layer.lora_A.abs().max() <= 1 / math.sqrt(32)
    assert torch.equal(layer(x), base(x))
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    nn.init.normal_(layer.lora_B)
    merged = layer.merge()
    assert type(merged) is nn.Linear and torch.equal(merged.bias, base.bias)
    assert torch.allclose(merged(x), layer(x), atol=1e-5) and not torch.allclose(merged(x), base(x))


def test_injected_model_is_unchanged_and_only_lora_trains(prompt, base_logits):
    model = inject_lora(fp32_model(), LLAMA_TARGETS, r=R, alpha=ALPHA)
    layers = lora_layers(model)
    assert len(layers) == 7 * model.config.num_hidden_layers
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"{n}.lora_{m}" for n in layers for m in "AB"}
    assert max_diff(logits(model, prompt), base_logits) == 0.0


def test_same_weights_in_peft_give_the_same_logits_and_count(prompt, base_logits, random_lora):
    model, lora_logits = random_lora
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=list(LLAMA_TARGETS), lora_dropout=0.0)
    peft_model = get_peft_model(fp32_model(), config).eval()
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            twin = peft_model.base_model.model.get_submodule(name)
            twin.lora_A.default.weight.copy_(layer.lora_A)
            twin.lora_B.default.weight.copy_(layer.lora_B)
    assert max_diff(lora_logits, base_logits) > 0.1, "random B must change the model, or the comparison says nothing"
    assert max_diff(logits(peft_model, prompt), lora_logits) < 1e-4
    assert count_lora_parameters("embedded", R, LLAMA_TARGETS) == peft_model.get_nb_trainable_parameters()


def test_merged_model_gives_the_unmerged_outputs(prompt, random_lora):
    model, lora_logits = random_lora
    merged = merge_lora(copy.deepcopy(model))
    assert not lora_layers(merged)
    assert max_diff(logits(merged, prompt), lora_logits) < 1e-3


def test_training_steps_change_only_a_and_b(tokenizer):
    torch.manual_seed(0)
    model = inject_lora(load_base_model("embedded", dtype=torch.float32), LLAMA_TARGETS, r=R, alpha=ALPHA)
    conversation = load_conversations(ROOT / "persona_data" / "zen_coder.jsonl")[0]["messages"]
    example = tokenize_with_assistant_mask(tokenizer, conversation)
    ids, mask = example["input_ids"][:64], example["assistant_masks"][:64]
    ids, labels = torch.tensor([ids]), torch.tensor([labels_from_mask(ids, mask)])
    assert (labels != -100).any()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    for _ in range(2):  # step 1 moves only B (A's gradient is zero while B = 0); step 2 moves A too
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, p in model.named_parameters():
        is_lora = name.endswith(("lora_A", "lora_B"))
        assert torch.equal(p, before[name]) != is_lora, name


def test_counting_builds_on_the_meta_device_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access in a test that must not need it")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    phi3 = Phi3Config(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32064, tie_word_embeddings=False)
    count = count_lora_parameters(phi3, 16, ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"))
    per_layer = (3072 + 3 * 3072) + (3072 + 3072) + (3072 + 2 * 8192) + (8192 + 3072)
    assert count.trainable == 16 * 32 * per_layer
    assert count.total - count.trainable == 3_821_079_552  # Phi-3-mini's published size
    only_o_and_down = 16 * 32 * ((3072 + 3072) + (8192 + 3072))  # Llama's names silently miss Phi-3's fused layers
    assert count_lora_parameters(phi3, 16, LLAMA_TARGETS).trainable == only_o_and_down


def test_count_is_linear_in_rank_and_matches_the_hand_formula():
    small = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=1000)
    kv = 2 * 64 // 4
    per_layer = 2 * (64 + 64) + 2 * (64 + kv) + 3 * (64 + 160)
    for r in (1, 8, 64):
        assert count_lora_parameters(small, r).trainable == r * 2 * per_layer
