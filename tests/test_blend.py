"""Blending adapters with peft: linear is not the weighted sum of the updates, cat is; blends are built once."""
import json

import pytest
import torch

from utils.blend import blend, blend_controls, blend_name, compare_combinations, peft_lora_layers
from utils.chat import PersonaChat, chat_widget
from utils.inference import BASE, attach_adapters
from utils.models import load_base_model

A, B = "captain_codebeard", "zen_coder"


def make_adapter(folder, name, seed):
    """A small LoRA adapter with random (untrained) non-zero weights: enough to test the arithmetic of blending."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layers_to_transform=[0, 1],
                        task_type="CAUSAL_LM")  # 4 layers: "svd" runs one SVD per layer, ~0.5 s each on 2 cores
    model = get_peft_model(load_base_model(), config)
    for parameter_name, parameter in model.named_parameters():
        if "lora_B" in parameter_name:
            torch.nn.init.normal_(parameter, std=0.02)
    model.save_pretrained(folder)
    (folder / "persona.json").write_text(json.dumps({"persona": name, "system_prompt": f"You are {name}.",
                                                     "base_model": "embedded"}))
    return folder


@pytest.fixture(scope="module")
def random_adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("random_adapters")
    return {name: make_adapter(root / f"{name}_final_adapter", name, seed) for seed, name in enumerate((A, B))}


@pytest.fixture(scope="module")
def model(random_adapters):
    return attach_adapters(load_base_model(dtype=torch.float32), random_adapters)


def test_linear_mixes_a_and_b_separately_while_cat_is_exact(model):
    comparison = compare_combinations(model, A, B, weight=0.5)
    assert comparison["cat"]["relative_error"] < 1e-5 and comparison["cat"]["rank"] == 8
    assert comparison["linear"]["relative_error"] > 0.1 and comparison["linear"]["rank"] == 4
    assert comparison["svd"]["rank"] == 4


def test_linear_is_exact_only_at_the_ends(model):
    assert compare_combinations(model, A, B, weight=1.0, combinations=["linear"])["linear"]["relative_error"] < 1e-5


def test_linear_by_hand_matches_peft(model):
    """peft's linear blend is (Σ √(w·s)·B_i)(Σ √(w·s)·A_i): the formula the lesson writes out."""
    layer = next(iter(peft_lora_layers(model).values()))
    name = blend(model, A, B, 0.3, "linear")
    mix = lambda factor: sum((w * layer.scaling[n]) ** 0.5 * getattr(layer, factor)[n].weight  # noqa: E731
                             for n, w in ((A, 0.3), (B, 0.7)))
    torch.testing.assert_close(layer.get_delta_weight(name), mix("lora_B") @ mix("lora_A"))


def test_a_blend_is_built_once_per_name_and_made_active(model, monkeypatch):
    name = blend(model, A, B, 0.25)
    assert name == blend_name(A, B, 0.25) == "blend_25_captain_codebeard_75_zen_coder"
    assert model.active_adapter == name
    built = []
    monkeypatch.setattr(type(model.base_model), "add_weighted_adapter", lambda *args, **kwargs: built.append(args))
    model.set_adapter(A)
    assert blend(model, A, B, 0.25) == name and built == [] and model.active_adapter == name


def test_peft_silently_ignores_an_existing_name(model):
    """The trap the cache relies on: re-blending under an old name with new weights changes nothing."""
    name = blend(model, A, B, 0.5)
    layer = next(iter(peft_lora_layers(model).values()))
    before = layer.get_delta_weight(name).clone()
    model.add_weighted_adapter([A, B], [1.0, 0.0], name, combination_type="cat")
    torch.testing.assert_close(layer.get_delta_weight(name), before)


def test_blend_controls_register_the_blend_as_a_chat_persona(model, tokenizer):
    chat = PersonaChat(model, tokenizer, {A: "You are a pirate.", B: "You are calm."}, max_new_tokens=4)
    panel = chat_widget(chat)
    controls = blend_controls(chat, panel, step=0.25).controls
    assert controls["first"].value == A and controls["second"].value == B
    controls["weight"].value = 0.75
    name = blend_name(A, B, 0.75)
    assert chat.current == name and name in chat.personas and chat.system_prompts[name] == "You are a pirate. You are calm."
    assert panel.controls["persona"].value == name and name in panel.controls["persona"].options
    assert chat.send("Hi") is not None and len(chat.histories[name]) == 2
    controls["weight"].value = 0.5
    controls["weight"].value = 0.75  # back to a cached blend: no second copy
    assert chat.personas.count(name) == 1 and chat.histories[name]
    panel.controls["persona"].value = BASE
    assert chat.current == BASE
