"""Measure personas: did the voice take hold, what did it cost, how close is the content to the reference replies.

Four systems per persona, on its held-out eval prompts: the base model ("base"), the base model with the persona's
system prompt ("prompted"), the same plus three in-persona exchanges from its training data ("fewshot": the
strongest baseline that trains nothing), and the adapter with the system prompt, as the chat runs it ("adapter").
"""
import json
import re
import time
from collections import Counter
from pathlib import Path

from .adapters import report_path
from .data import load_conversations
from .inference import BASE, generate_token_ids, persona, with_system_prompt
from .judge import (DATA_DIR, NEUTRAL, classifier_accuracy_on_references, eval_pairs, persona_files,
                    style_accuracy, style_probabilities, train_style_classifier)
from .likelihood import assistant_nll, mean_kl_from_base, perplexity, scoring_dtype
from .signatures import signature_rates

SYSTEMS = ("base", "prompted", "fewshot", "adapter")
MAX_NEW_TOKENS = 128  # whole replies: the judge reads all of it, and a reply that never ends shows as not ending
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
BLEND_PROMPTS = 16
FEW_SHOT = 3
NEUTRAL_SYSTEM_PROMPT = "You are a helpful assistant."  # the plain assistant's: blends are asked under this one


def ask(prompt: str, system_prompt: str | None = None, reply: str | None = None) -> list[dict]:
    """A one-turn conversation: the user's prompt (after an optional system prompt) and, to score it, a reply."""
    turns = [{"role": "user", "content": prompt}] + ([{"role": "assistant", "content": reply}] if reply else [])
    return with_system_prompt(turns, system_prompt)


def few_shot_turns(name: str, data_dir=DATA_DIR, shots: int = FEW_SHOT) -> list[dict]:
    """The first `shots` one-exchange conversations of the persona's training file, as user/assistant turns."""
    single = [c["messages"] for c in load_conversations(persona_files(data_dir)[name])
              if sum(m["role"] == "user" for m in c["messages"]) == 1]
    return [m for messages in single[:shots] for m in messages if m["role"] != "system"]


def conversations_for(system: str, prompts: list[str], system_prompt: str | None, shots: list[dict]):
    """What each system is asked: no system prompt for the base, the examples first for few-shot."""
    if system == "base":
        return [ask(p) for p in prompts]
    examples = shots if system == "fewshot" else []
    return [with_system_prompt(examples + [{"role": "user", "content": p}], system_prompt) for p in prompts]


def generate(model, tokenizer, name: str, conversations: list[list[dict]], max_new_tokens: int = MAX_NEW_TOKENS,
             batch_size: int = 48, **sampling) -> tuple[list[str], list[bool]]:
    """Replies of persona `name` (or "base"), greedy unless told otherwise, and whether each ended its turn.
    A whole eval file fits one batch: on a CPU one batch of 46 takes less time than three of 16."""
    texts, ended = [], []
    with persona(model, name):
        for start in range(0, len(conversations), batch_size):
            rows = generate_token_ids(model, tokenizer, conversations[start:start + batch_size],
                                      max_new_tokens=max_new_tokens, **sampling)
            texts += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]
            ended += [bool(row) and row[-1] == tokenizer.eos_token_id for row in rows]
    return texts, ended


def loops(text: str, n: int = 4, times: int = 3) -> bool:
    """Does some word n-gram occur `times` or more times? ("a single line of code, a single line of code, ...")"""
    words = re.findall(r"[\w']+", text.lower())
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return bool(counts) and max(counts.values()) >= times


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1: the longest common word subsequence, as a share of both texts' lengths."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(references)


def evaluate_persona(model, tokenizer, classifier, name: str, system_prompt: str | None, data_dir=DATA_DIR,
                     max_prompts: int | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                     systems=SYSTEMS, adapter: str | None = None) -> tuple[dict, list[dict]]:
    """Style, ROUGE-L, repetition, end of turn, signatures and held-out NLL of one persona for each system (the
    "adapter" system runs the adapter loaded as `adapter`, by default the persona's name).

    Returns the metrics and, per eval prompt, `{"prompt", "reference", <system>: reply, ...}`.
    """
    pairs = eval_pairs(name, data_dir, max_prompts)
    prompts, references = [p["prompt"] for p in pairs], [p["reference"] for p in pairs]
    shots = few_shot_turns(name, data_dir)
    replies, ended = {}, {}
    for system in systems:
        who = (adapter or name) if system == "adapter" else BASE
        conversations = conversations_for(system, prompts, system_prompt, shots)
        replies[system], ended[system] = generate(model, tokenizer, who, conversations, max_new_tokens)
    metrics = {}
    for system in systems:
        metrics[f"style_accuracy_{system}"] = style_accuracy(classifier, replies[system], name)
        metrics[f"rouge_l_{system}"] = rouge_l(replies[system], references)
        metrics[f"repetition_rate_{system}"] = sum(map(loops, replies[system])) / len(prompts)
        metrics[f"ended_rate_{system}"] = sum(ended[system]) / len(prompts)
        metrics[f"markers_{system}"] = signature_rates(replies[system])
    scored = [ask(p, system_prompt, r) for p, r in zip(prompts, references)]  # the same text for both models
    metrics |= {"nll_base": assistant_nll(model, tokenizer, scored, BASE),
                "nll_adapter": assistant_nll(model, tokenizer, scored, adapter or name)}
    rows = [{"prompt": p, "reference": r} | {system: replies[system][i] for system in systems}
            for i, (p, r) in enumerate(zip(prompts, references))]
    return metrics, rows


def pressure_rows(name: str, data_dir=DATA_DIR, max_rows: int | None = None) -> list[list[str]]:
    """The persona's held-out pressure prompts (eval/pressure/): each a list of user turns."""
    lines = (Path(data_dir) / "eval" / "pressure" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["turns"] for line in lines if line.strip()][:max_rows]


def in_character_under_pressure(model, tokenizer, classifier, name: str, who: str, system_prompt: str | None,
                                rows: list[list[str]], shots: list[dict] = (), max_new_tokens: int = 64) -> float:
    """Share of pressure conversations whose last reply the judge still gives to persona `name`. The model (`who`:
    an adapter or "base") answers every user turn in order, its own replies kept in the conversation."""
    conversations = [with_system_prompt(list(shots), system_prompt) for _ in rows]
    last = [""] * len(rows)
    for turn in range(max(map(len, rows))):
        active = [i for i, row in enumerate(rows) if turn < len(row)]
        for i in active:
            conversations[i] = conversations[i] + [{"role": "user", "content": rows[i][turn]}]
        replies, _ = generate(model, tokenizer, who, [conversations[i] for i in active], max_new_tokens,
                              batch_size=len(active))
        for i, text in zip(active, replies):
            conversations[i] = conversations[i] + [{"role": "assistant", "content": text}]
            last[i] = text
    return style_accuracy(classifier, last, name)


def forgetting(model, tokenizer, name: str, general_text: str, data_dir=DATA_DIR,
               max_prompts: int | None = None) -> dict:
    """What the adapter does away from its persona: KL from the base on neutral Q&A, perplexity of plain prose."""
    neutral = [ask(p["prompt"], reply=p["reference"]) for p in eval_pairs(NEUTRAL, data_dir, max_prompts)]
    return {"kl_neutral": mean_kl_from_base(model, tokenizer, neutral, name),
            "ppl_general_adapter": perplexity(model, tokenizer, general_text, name)}


def blend_sweep(model, tokenizer, classifier, a: str, b: str, prompts: list[str], system_prompt: str | None = None,
                weights=BLEND_WEIGHTS, max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """Style of the blends weight·a + (1 - weight)·b ("cat", exact) on persona-free prompts, under one fixed system
    prompt: only the weights change. Weights are sorted, so the parents b (weight 0) and a (weight 1) sit at the ends.
    """
    from .blend import blend

    weights = sorted(weights)
    sweep = {"pair": [a, b], "combination_type": "cat", "weights": weights, "prompts": len(prompts),
             "system_prompt": system_prompt, "probability": {a: [], b: []}, "share": {a: [], b: []}}
    conversations = [ask(p, system_prompt) for p in prompts]
    for weight in weights:
        replies, _ = generate(model, tokenizer, blend(model, a, b, weight), conversations, max_new_tokens)
        probabilities = style_probabilities(classifier, replies)
        for parent in (a, b):
            sweep["probability"][parent].append(probabilities[parent])
            sweep["share"][parent].append(style_accuracy(classifier, replies, parent))
    return sweep


TARGETS = {  # the series' targets (issue-level goals, checked on every report)
    "adapter style >= 0.9": lambda m: m["style_accuracy_adapter"] >= 0.9,
    "base style <= 0.1": lambda m: m["style_accuracy_base"] <= 0.1,
    "adapter >= 0.3 above prompted and few-shot":
        lambda m: m["style_accuracy_adapter"] - max(m["style_accuracy_prompted"], m["style_accuracy_fewshot"]) >= 0.3,
    "NLL >= 25% below base": lambda m: m["nll_adapter"] <= 0.75 * m["nll_base"],
    "perplexity within 10%": lambda m: m["ppl_general_adapter"] <= 1.1 * m["ppl_general_base"],
    "repetition <= 0.05": lambda m: m["repetition_rate_adapter"] <= 0.05,
}


def check_targets(report: dict) -> dict:
    """Which of the series' targets hold, per persona."""
    return {name: {target: bool(holds(m)) for target, holds in TARGETS.items()}
            for name, m in report["personas"].items()}


def evaluate_loaded(model, tokenizer, system_prompts: dict[str, str | None], classifier=None, data_dir=DATA_DIR,
                    max_prompts: int | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                    blend_pair: tuple[str, str] | None = None, blend_weights=BLEND_WEIGHTS,
                    blend_prompts: int = BLEND_PROMPTS, trap_combinations=("linear", "cat"), progress=None) -> dict:
    """Every metric for every persona adapter already on `model`, plus a blend sweep of two of them (a report dict).

    `trap_combinations` may add "svd": exact, but one SVD per layer (a minute or more on a 2-core CPU).
    """
    from .blend import compare_combinations

    start = time.perf_counter()
    classifier = classifier or train_style_classifier(data_dir)
    on_references = classifier_accuracy_on_references(classifier, data_dir)
    general_text = (Path(data_dir) / "eval" / "general_text.txt").read_text(encoding="utf-8")
    ppl_base = perplexity(model, tokenizer, general_text, BASE)
    report = {"personas": {}, "classifier_accuracy_on_references": on_references["overall"],
              "classifier_accuracy_per_class": on_references, "examples": {}}
    for name, system_prompt in system_prompts.items():
        metrics, rows = evaluate_persona(model, tokenizer, classifier, name, system_prompt, data_dir, max_prompts,
                                         max_new_tokens)
        metrics |= {"ppl_general_base": ppl_base} | forgetting(model, tokenizer, name, general_text, data_dir,
                                                                max_prompts)
        report["personas"][name], report["examples"][name] = metrics, rows[:3]
        if progress:
            progress(f"{name}: evaluated ({time.perf_counter() - start:.0f} s so far)")
    pair = blend_pair or tuple(system_prompts)[:2]
    if len(pair) == 2:
        prompts = [p["prompt"] for p in eval_pairs(NEUTRAL, data_dir, min(blend_prompts, max_prompts or blend_prompts))]
        report["blend"] = blend_sweep(model, tokenizer, classifier, *pair, prompts, NEUTRAL_SYSTEM_PROMPT,
                                      blend_weights, max_new_tokens)
        report["blend"]["trap"] = compare_combinations(model, *pair, 0.5, combinations=trap_combinations)
    report["targets"] = check_targets(report)
    report["settings"] = {"max_prompts": max_prompts, "max_new_tokens": max_new_tokens, "decoding": "greedy",
                          "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                          "scoring_dtype": scoring_dtype(model),
                          "few_shot_examples": FEW_SHOT, "seconds": round(time.perf_counter() - start, 1)}
    return report


def evaluate_adapters(adapters_dir, out_path=None, progress=None, **options) -> dict:
    """Load the base and every adapter in `adapters_dir`, evaluate them (see `evaluate_loaded` for the options),
    and write the report as JSON to `out_path`."""
    from .loading import load_personas

    personas = load_personas(adapters_dir)
    report = evaluate_loaded(personas.model, personas.tokenizer, personas.system_prompts, progress=progress,
                             **options)
    report["settings"] |= {"adapters_dir": str(adapters_dir), "base_model": personas.base_model}
    report["adapters"] = {name: report_path(path) for name, path in personas.adapters.items()}
    if out_path:
        save_report(report, out_path)
    return report


def save_report(report: dict, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))


def metrics_table(report: dict):
    """The scalar metrics, one row per persona (a pandas DataFrame)."""
    import pandas as pd

    rows = {name: {k: v for k, v in m.items() if not isinstance(v, dict)} for name, m in report["personas"].items()}
    return pd.DataFrame(rows).T


def evaluate_preference(sft_adapter, dpo_adapter, max_prompts: int | None = None, max_rows: int | None = None,
                        max_new_tokens: int = 96) -> dict:
    """SFT vs SFT+DPO for one persona: style, NLL, forgetting, loops, end of turn, and in character under pressure
    (with the prompted and few-shot baselines), in the fields of figures/preference_metrics.json."""
    from .loading import load_personas

    personas = load_personas({"sft": sft_adapter, "dpo": dpo_adapter})
    model, tokenizer = personas.model, personas.tokenizer
    name, system_prompt = personas.records["sft"]["persona"], personas.system_prompts["sft"]
    classifier = train_style_classifier()
    general = (DATA_DIR / "eval" / "general_text.txt").read_text(encoding="utf-8")
    rows, shots = pressure_rows(name, max_rows=max_rows), few_shot_turns(name)
    metrics = {"ppl_general_base": perplexity(model, tokenizer, general, BASE)}
    for who, label, examples in ((BASE, "prompted", []), (BASE, "fewshot", shots), ("sft", "sft", []),
                                 ("dpo", "dpo", [])):
        metrics[f"in_character_under_pressure_{label}"] = in_character_under_pressure(
            model, tokenizer, classifier, name, who, system_prompt, rows, examples)
    for adapter in ("sft", "dpo"):
        style, _ = evaluate_persona(model, tokenizer, classifier, name, system_prompt, max_prompts=max_prompts,
                                    max_new_tokens=max_new_tokens, systems=("adapter",), adapter=adapter)
        cost = forgetting(model, tokenizer, adapter, general, max_prompts=max_prompts)
        metrics |= {f"style_accuracy_{adapter}": style["style_accuracy_adapter"], "nll_base": style["nll_base"],
                    f"nll_{adapter}": style["nll_adapter"], f"kl_neutral_{adapter}": cost["kl_neutral"],
                    f"ppl_general_{adapter}": cost["ppl_general_adapter"],
                    f"repetition_rate_{adapter}": style["repetition_rate_adapter"],
                    f"ended_rate_{adapter}": style["ended_rate_adapter"]}
    return {"personas": {name: metrics},
            "adapters": {"sft": report_path(sft_adapter), "dpo": report_path(dpo_adapter)},
            "settings": {"max_prompts": max_prompts, "pressure_rows": len(rows), "max_new_tokens": max_new_tokens},
            "dpo": {key: personas.records["dpo"].get(key) for key in ("dpo_settings", "pairs", "dpo_steps",
                                                                      "dpo_seconds")}}
