"""LoRA by hand: a frozen nn.Linear plus a trainable low-rank update, y = W·x + (alpha/r)·B·A·x."""
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """Wraps a frozen `base` (W: out×in) with lora_A (r×in, random) and lora_B (out×r, zero): starts as W·x exactly."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's (and nn.Linear's) default init for A

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain nn.Linear with W + scaling·B·A: the same outputs, no extra matmuls at inference."""
        merged = nn.utils.skip_init(nn.Linear, self.base.in_features, self.base.out_features,
                                    bias=self.base.bias is not None, device=self.base.weight.device,
                                    dtype=self.base.weight.dtype)  # no random init: every value is copied in
        merged.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
        if self.base.bias is not None:
            merged.bias.copy_(self.base.bias)
        return merged


def _targets(model: nn.Module, target_names) -> list[str]:
    """Names of the nn.Linear submodules whose last name component is one of `target_names`."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target_names]


def inject_lora(model: nn.Module, target_names=LLAMA_TARGETS, r: int = 16, alpha: float = 32) -> nn.Module:
    """Freeze every weight of `model`, then replace each targeted nn.Linear, in place, by a LoRALinear."""
    model.requires_grad_(False)
    for name in _targets(model, target_names):
        model.set_submodule(name, LoRALinear(model.get_submodule(name), r, alpha))
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace each LoRALinear by its merged nn.Linear, in place (peft's `merge_and_unload`)."""
    for name, layer in lora_layers(model).items():
        model.set_submodule(name, layer.merge())
    return model


class LoRAParameterCount(NamedTuple):
    trainable: int  # LoRA's A and B
    total: int  # base model + LoRA, as peft's get_nb_trainable_parameters counts


def count_lora_parameters(config_or_model_id, r: int = 16, target_names=LLAMA_TARGETS) -> LoRAParameterCount:
    """Count LoRA's parameters for any architecture without its weights: build it on the meta device (no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = config_or_model_id
    if isinstance(config, str):
        from .models import resolve_model_path

        config = AutoConfig.from_pretrained(resolve_model_path(config))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    lora = sum(r * (layer.in_features + layer.out_features)
               for layer in map(model.get_submodule, _targets(model, target_names)))
    base = sum(p.numel() for p in model.parameters())  # tied embeddings are counted once
    return LoRAParameterCount(lora, base + lora)
