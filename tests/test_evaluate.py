"""Persona metrics: the style classifier on held-out references, the scoring functions against transformers' own
loss, and a small end-to-end evaluation of a real adapter written as JSON."""
import contextlib
import json
import math
import shutil

import pytest
import torch

from utils.evaluate import ask, evaluate_adapters, few_shot_turns, loops, rouge_l
from utils.hardware import CPU_BF16_WORTH_IT, cpu_bf16_speedup
from utils.inference import BASE
from utils.judge import (NEUTRAL, classifier_accuracy_on_references, eval_pairs, mask_topic, persona_files,
                         train_style_classifier, voice_vocabulary)
from utils import likelihood
from utils.likelihood import assistant_nll, mean_kl_from_base, perplexity, scoring_autocast, scoring_dtype
from utils.masking import labels_from_mask, tokenize_with_assistant_mask
from utils.signatures import signature_rates
from utils.models import load_base_model

PERSONAS = [name for name in persona_files() if name != NEUTRAL]
SYSTEMS = ("base", "prompted", "fewshot", "adapter")
METRICS = ("nll_adapter", "nll_base", "kl_neutral", "ppl_general_base", "ppl_general_adapter",
           *(f"{kind}_{system}" for kind in ("style_accuracy", "rouge_l", "repetition_rate", "ended_rate")
             for system in SYSTEMS))


@pytest.fixture(scope="module")
def classifier():
    return train_style_classifier()


@pytest.fixture(scope="module")
def base_model():
    return load_base_model()


@pytest.mark.parametrize("name", PERSONAS)
def test_a_subset_of_eval_prompts_spreads_over_the_whole_file(name):
    everything = eval_pairs(name)
    subset = eval_pairs(name, max_prompts=16)
    assert len(subset) == 16 and subset[0] == everything[0] and all(p in everything for p in subset)
    positions = [everything.index(p) for p in subset]
    assert positions == sorted(positions) and positions[-1] >= len(everything) * 0.9, positions
    assert eval_pairs(name, max_prompts=10**6) == everything


def test_the_classifier_tells_the_personas_apart_on_held_out_references(classifier):
    accuracy = classifier_accuracy_on_references(classifier)
    assert accuracy["overall"] >= 0.9, accuracy
    assert set(accuracy) == {"overall", *persona_files()} and min(accuracy.values()) >= 0.75, accuracy


def test_the_judge_reads_the_words_a_voice_keeps_using_and_masks_the_topic(classifier):
    replies = {"pirate": ["Aye, matey, a list be ordered.", "Aye, a tuple be fixed, matey."] * 25 + ["A tripod."],
               "plain": ["A list is ordered.", "A tuple is fixed."] * 25 + ["Use a tripod."]}
    vocabulary = voice_vocabulary(replies)
    assert {"aye", "matey", "be", "list", "is"} <= vocabulary and "tripod" not in vocabulary
    assert mask_topic("Use a Tripod, matey!", vocabulary) == "_ a _, matey!"
    read = classifier.named_steps["tfidfvectorizer"].preprocessor
    assert read("Keep the salmon in the oven, me hearty.") == "keep the _ in the _, me hearty."


def test_each_signature_opens_its_own_references_and_rarely_the_plain_ones():
    neutral = signature_rates([p["reference"] for p in eval_pairs(NEUTRAL)])
    for name in PERSONAS:
        own = signature_rates([p["reference"] for p in eval_pairs(name)])
        assert own[name] >= 0.9 and own[name] - neutral[name] >= 0.7, (name, own[name], neutral[name])


def test_loops_and_few_shot_examples():
    assert loops("a single line of code, a single line of code, a single line of code")
    assert not loops("Binary search halves the range until it finds the item or runs out of range.")
    turns = few_shot_turns("zen_coder")
    assert [t["role"] for t in turns] == ["user", "assistant"] * 3


def test_assistant_nll_is_the_training_loss(base_model, tokenizer):
    conversation = ask("What is a list?", "You are terse.", "An ordered, changeable collection.")
    encoded = tokenize_with_assistant_mask(tokenizer, conversation)
    labels = labels_from_mask(encoded["input_ids"], encoded["assistant_masks"])
    with torch.no_grad(), scoring_autocast(base_model):
        loss = base_model(input_ids=torch.tensor([encoded["input_ids"]]), labels=torch.tensor([labels])).loss
    assert assistant_nll(base_model, tokenizer, [conversation], BASE) == pytest.approx(loss.item(), rel=1e-3)


def test_scoring_in_bf16_on_a_cpu_agrees_with_fp32(base_model, tokenizer, monkeypatch):
    fast_bf16 = cpu_bf16_speedup() > CPU_BF16_WORTH_IT
    assert isinstance(scoring_autocast(base_model), torch.autocast) == fast_bf16
    assert scoring_dtype(base_model) == ("bfloat16 autocast" if fast_bf16 else "float32"), "what reports record"
    conversations = [ask(p["prompt"], reply=p["reference"]) for p in eval_pairs("zen_coder", max_prompts=8)]
    fast = assistant_nll(base_model, tokenizer, conversations, BASE)
    monkeypatch.setattr(likelihood, "scoring_autocast", lambda model: contextlib.nullcontext())
    assert fast == pytest.approx(assistant_nll(base_model, tokenizer, conversations, BASE), rel=3e-3)


def test_the_base_model_has_no_kl_from_itself_and_perplexity_is_exp_loss(base_model, tokenizer):
    conversations = [ask(p["prompt"], reply=p["reference"]) for p in eval_pairs(NEUTRAL, max_prompts=2)]
    assert mean_kl_from_base(base_model, tokenizer, conversations, BASE) == pytest.approx(0.0, abs=1e-6)
    text = "The river ran quietly past the old mill, and the town slept."
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad(), scoring_autocast(base_model):
        loss = base_model(input_ids=ids, labels=ids).loss.item()
    assert perplexity(base_model, tokenizer, text, BASE) == pytest.approx(math.exp(loss), rel=1e-3)


def test_rouge_l():
    assert rouge_l(["the cat sat"], ["the cat sat"]) == 1.0
    assert rouge_l(["dogs bark loudly"], ["the cat sat"]) == 0.0


def test_evaluate_adapters_writes_every_metric(pirate_adapter, tmp_path):
    """A real (briefly trained) pirate adapter, and a copy of it under a second name so that a blend exists."""
    adapters = tmp_path / "adapters"
    shutil.copytree(pirate_adapter, adapters / pirate_adapter.name)
    twin = adapters / "zen_coder_final_adapter"
    shutil.copytree(pirate_adapter, twin)
    record = json.loads((twin / "persona.json").read_text()) | {"persona": "zen_coder"}
    (twin / "persona.json").write_text(json.dumps(record))

    out = tmp_path / "metrics.json"
    report = evaluate_adapters(adapters, out, max_prompts=3, max_new_tokens=12, blend_weights=(0.0, 0.5, 1.0))
    assert json.loads(out.read_text()) == report
    assert set(report["personas"]) == {"captain_codebeard", "zen_coder"}
    for metrics in report["personas"].values():
        assert all(isinstance(metrics[key], float) and math.isfinite(metrics[key]) for key in METRICS)
        assert 0 <= metrics["style_accuracy_adapter"] <= 1 and metrics["kl_neutral"] > 0
    pirate = report["personas"]["captain_codebeard"]
    assert pirate["nll_adapter"] < pirate["nll_base"], "training on pirate replies lowers their held-out NLL"
    assert report["classifier_accuracy_on_references"] >= 0.9
    assert report["blend"]["pair"] == ["captain_codebeard", "zen_coder"]
    assert len(report["blend"]["share"]["captain_codebeard"]) == 3
    assert set(report["targets"]) == {"captain_codebeard", "zen_coder"}
    assert report["examples"]["captain_codebeard"][0].keys() == {"prompt", "reference", *SYSTEMS}
