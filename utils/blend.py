"""Blend persona adapters with peft's `add_weighted_adapter`, and see why "linear" is not the blend it sounds like.

A LoRA update is a product, ΔW = s·B·A (s = alpha / r). The blend we want is the weighted sum of the updates,
w·ΔW_a + (1 - w)·ΔW_b. How each combination type gets there (peft/tuners/lora/model.py):

- "cat" stacks the factors, A = [w·s_a·A_a ; (1-w)·s_b·A_b] and B = [B_a  B_b], so B·A is exactly the weighted sum,
  at rank r_a + r_b.
- "linear" mixes A and B separately, A = Σ √(w_i·s_i)·A_i and B = Σ √(w_i·s_i)·B_i, so B·A also holds the cross
  terms B_a·A_b and B_b·A_a: products of factors that were never trained together. Only at w = 0 or 1 is it exact.
- "svd" computes the exact weighted sum and truncates it to rank r by SVD: close, at the original rank.
"""
import torch

from .inference import BASE

COMBINATIONS = ("linear", "cat", "svd")


def blend_name(a: str, b: str, weight: float, combination_type: str = "cat") -> str:
    """`blend_75_captain_codebeard_25_zen_coder`: whole percents, because an adapter name may not contain a "."
    (it becomes a key of torch's ModuleDict)."""
    name = f"blend_{round(100 * weight)}_{a}_{round(100 * (1 - weight))}_{b}"
    return name if combination_type == "cat" else f"{name}_{combination_type}"


def blend(model, a: str, b: str, weight: float, combination_type: str = "cat") -> str:
    """Make the adapter weight·a + (1 - weight)·b the active one, building it only the first time; returns its name.

    Two peft behaviours to know: `add_weighted_adapter` silently does nothing when the name already exists (here
    that is the cache: the name carries the weight, so a new weight gets a new adapter), and a new adapter is not
    active until `set_adapter` chooses it. Weights are rounded to whole percents, like the name.
    """
    weight = round(weight, 2)
    name = blend_name(a, b, weight, combination_type)
    if name not in model.peft_config:
        model.add_weighted_adapter([a, b], [weight, 1 - weight], name, combination_type=combination_type)
    model.set_adapter(name)
    return name


def peft_lora_layers(model) -> dict:
    """Every LoRA-wrapped linear layer of a PeftModel, by module name."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


QUERY_PROJECTIONS = ("q_proj", "qkv_proj", "query_key_value", "c_attn")  # Llama/Qwen2, Phi-3, Falcon, GPT-2


def first_lora_layer(model) -> tuple[str, object]:
    """(name, module) of the first LoRA-wrapped layer: layer 0's attention input projection in every architecture
    (q_proj in Llama and Qwen2, the fused qkv_proj in Phi-3), with the name the unwrapped model gives it."""
    layers = peft_lora_layers(model)
    name = next((n for n in layers if n.endswith(QUERY_PROJECTIONS)), next(iter(layers)))
    return name.removeprefix("base_model.model."), layers[name]


def compare_combinations(model, a: str, b: str, weight: float = 0.5, layer: str | None = None,
                         combinations=COMBINATIONS) -> dict[str, dict]:
    """For one layer (default: the first LoRA layer), how far each combination's update is from the true blend
    w·ΔW_a + (1 - w)·ΔW_b.

    Returns `{combination: {"relative_error": ‖ΔW_blend - true‖ / ‖true‖, "rank": r}}`; 0 error means exact.
    """
    layers = peft_lora_layers(model)
    module = first_lora_layer(model)[1] if layer is None else next(m for n, m in layers.items() if n.endswith(layer))
    with torch.no_grad():
        true = weight * module.get_delta_weight(a) + (1 - weight) * module.get_delta_weight(b)
        comparison = {}
        for combination in combinations:
            name = blend(model, a, b, weight, combination)
            error = torch.linalg.norm(module.get_delta_weight(name) - true) / torch.linalg.norm(true)
            comparison[combination] = {"relative_error": error.item(), "rank": model.peft_config[name].r}
    return comparison


def blend_system_prompt(first: str | None, second: str | None) -> str | None:
    """Both parents' system prompts, one after the other: the same text at every weight, so only the weights change.

    Adapters trained with a fixed system prompt lean on it; without one they may barely speak in voice at all.
    """
    return " ".join(dict.fromkeys(p for p in (first, second) if p)) or None


def add_to_chat(chat, name: str, system_prompt: str | None = None):
    """Register an adapter already on the chat's model as one more persona of a PersonaChat, and switch to it."""
    if name not in chat.histories:
        chat.system_prompts[name] = system_prompt
        chat.histories[name] = []
        chat.personas.append(name)
    chat.switch(name)


def blend_controls(chat, panel=None, step: float = 0.1):
    """Two persona dropdowns and a weight slider for a PersonaChat (and its `chat_widget` panel, when given).

    Every change builds the blend weight·first + (1 - weight)·second once (cached by name, one per weight step),
    adds it to the chat as a persona (with both parents' system prompts, see `blend_system_prompt`) and switches
    to it.
    """
    import ipywidgets as w

    parents = [name for name in chat.personas if name != BASE and not name.startswith("blend_")]
    first = w.Dropdown(options=parents, value=parents[0], description="Blend")
    second = w.Dropdown(options=parents, value=parents[min(1, len(parents) - 1)], description="with")
    weight = w.FloatSlider(value=0.5, min=0.0, max=1.0, step=step, readout_format=".2f", continuous_update=False,
                           description="weight")
    status = w.HTML()

    def on_change(_=None):
        name = blend(chat.model, first.value, second.value, weight.value)
        parents = (chat.system_prompts[first.value], chat.system_prompts[second.value])
        add_to_chat(chat, name, blend_system_prompt(*parents))
        if panel is not None:
            panel.controls["persona"].options = chat.personas
            panel.controls["persona"].value = name
        cached = sum(adapter.startswith("blend_") for adapter in chat.model.peft_config)
        status.value = f"chatting with <b>{name}</b> ({cached} blends built so far)"

    for control in (first, second, weight):
        control.observe(on_change, names="value")
    controls = w.VBox([w.HBox([first, second]), w.HBox([weight, status])])
    controls.controls = {"first": first, "second": second, "weight": weight, "status": status, "apply": on_change}
    return controls
