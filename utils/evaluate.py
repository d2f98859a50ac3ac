"""Measure personas: did the voice take hold, what did it cost, how close is the content to the reference replies.

Three systems per persona, on its held-out eval prompts: the base model ("base"), the base model with the persona's
system prompt ("prompted"), and the adapter with that same system prompt, as the chat runs it ("adapter").
"""
import json
import math
import re
import time
from pathlib import Path

import torch

from .data import load_conversations, tokenize_with_assistant_mask
from .inference import BASE, generate_replies, persona, with_system_prompt

DATA_DIR = Path(__file__).resolve().parents[1] / "persona_data"
NEUTRAL = "neutral"
SYSTEMS = ("base", "prompted", "adapter")


# --- the data ------------------------------------------------------------------------------------------------------

def persona_files(data_dir=DATA_DIR) -> dict[str, Path]:
    """Training files by class: every persona, plus the plain assistant as the "neutral" class."""
    data_dir = Path(data_dir)
    personas = {p.stem: p for p in sorted(data_dir.glob("*.jsonl"))}
    return personas | {NEUTRAL: data_dir / "neutral" / "plain_assistant.jsonl"}


def training_replies(path) -> list[str]:
    return [m["content"] for c in load_conversations(path) for m in c["messages"] if m["role"] == "assistant"]


def eval_pairs(name: str, data_dir=DATA_DIR, max_prompts: int | None = None) -> list[dict]:
    """Held-out `{"prompt", "reference"}` pairs of a persona (or of "neutral")."""
    lines = (Path(data_dir) / "eval" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()][:max_prompts]


# --- 1. style: a classifier that tells the personas apart ----------------------------------------------------------

def train_style_classifier(data_dir=DATA_DIR):
    """Character n-gram TF-IDF + logistic regression, fitted on the training replies of every persona and neutral.

    Character n-grams see vocabulary ("matey"), contractions ("lookin'"), punctuation and rhythm alike, with no
    tokenizer to choose. Fitting takes a second or two.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts, labels = [], []
    for name, path in persona_files(data_dir).items():
        replies = training_replies(path)
        texts += replies
        labels += [name] * len(replies)
    classifier = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2),
                               LogisticRegression(C=10, max_iter=2000))
    return classifier.fit(texts, labels)


def classifier_accuracy_on_references(classifier, data_dir=DATA_DIR) -> dict[str, float]:
    """Share of held-out reference replies classified as their own persona, per class and "overall"."""
    scores, hits, total = {}, 0, 0
    for name in persona_files(data_dir):
        references = [pair["reference"] for pair in eval_pairs(name, data_dir)]
        correct = int((classifier.predict(references) == name).sum())
        scores[name] = correct / len(references)
        hits, total = hits + correct, total + len(references)
    return {"overall": hits / total} | scores


def style_accuracy(classifier, texts: list[str], name: str) -> float:
    """Share of texts the classifier attributes to persona `name`."""
    return float((classifier.predict(texts) == name).mean())


def style_probabilities(classifier, texts: list[str]) -> dict[str, float]:
    """The classifier's mean probability of each class over the texts (a softer score than the share)."""
    mean = classifier.predict_proba(texts).mean(axis=0)
    return {name: float(p) for name, p in zip(classifier.classes_, mean)}


# Hand-written markers a reader can check by eye; cruder than the classifier, and meant to be.
def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s] or [""]


PIRATE_WORDS = re.compile(r"\b(ye|yer|matey|mateys|aye|arr+|ahoy|avast|hearties|landlubbers?)\b|\w+in'", re.I)
CAT_WORDS = re.compile(r"\b(cats?|feline|kittens?|paws?|purr\w*|whiskers?|meow\w*|pounc\w*|mice|mouse|yarn|catnip)\b",
                       re.I)
VERB_LAST = re.compile(r"\b(?:(?:is|are|was|were|can|may|must|will|does|do|has|have|should|be)"
                       r"|(?:it|you|they|we|one|this|that|i)\s+\w+)[.!?]", re.I)  # "... it is." "... you can."
MARKERS = {
    "captain_codebeard": lambda text: bool(PIRATE_WORDS.search(text)),
    "professor_snugglesworth": lambda text: bool(CAT_WORDS.search(text)),
    "zen_coder": lambda text: sum(len(s.split()) for s in _sentences(text)) / len(_sentences(text)) <= 9,
    "master_brindlewood": lambda text: bool(VERB_LAST.search(text)),
}
MARKER_NAMES = {"captain_codebeard": "pirate words", "professor_snugglesworth": "cat words",
                "zen_coder": "short sentences (<= 9 words)", "master_brindlewood": "verb last (\"... it is.\")"}


def marker_rates(texts: list[str]) -> dict[str, float]:
    """Share of texts showing each persona's hand-written marker."""
    return {name: sum(map(has_marker, texts)) / len(texts) for name, has_marker in MARKERS.items()}


# --- 2. and 3. likelihoods: held-out NLL, forgetting -----------------------------------------------------------------

def _right_padded(rows: list[tuple[list[int], list[int]]], pad_token_id: int):
    """(token ids, scored mask) rows -> right-padded input_ids, attention_mask and scored mask tensors.

    Scoring pads on the right (unlike generation): every row then starts at position 0, as in training.
    """
    width = max(len(ids) for ids, _ in rows)
    fill = lambda row, value: row + [value] * (width - len(row))  # noqa: E731
    return (torch.tensor([fill(ids, pad_token_id) for ids, _ in rows]),
            torch.tensor([fill([1] * len(ids), 0) for ids, _ in rows]),
            torch.tensor([fill(mask, 0) for _, mask in rows]).bool())


def _conversation_batches(tokenizer, conversations: list[list[dict]], batch_size: int):
    for start in range(0, len(conversations), batch_size):
        encoded = [tokenize_with_assistant_mask(tokenizer, c) for c in conversations[start:start + batch_size]]
        yield _right_padded([(e["input_ids"], e["assistant_masks"]) for e in encoded], tokenizer.pad_token_id)


@torch.inference_mode()
def _log_probs_at(model, ids, attention, scored):
    """Next-token log-probabilities at the positions that predict a scored token, and those tokens: [n, vocab], [n]."""
    logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits[:, :-1]
    predicts_scored = scored[:, 1:].to(model.device)  # position t predicts token t + 1
    return torch.log_softmax(logits[predicts_scored].float(), dim=-1), ids[:, 1:].to(model.device)[predicts_scored]


def _mean_nll(model, batches) -> float:
    total, count = 0.0, 0
    for batch in batches:
        log_probs, targets = _log_probs_at(model, *batch)
        total -= log_probs.gather(1, targets[:, None]).sum().item()
        count += len(targets)
    return total / count


def assistant_nll(model, tokenizer, conversations: list[list[dict]], name: str, batch_size: int = 8) -> float:
    """Mean negative log-likelihood (nats per token) of the assistant's tokens: the training loss, on held-out data."""
    with persona(model, name):
        return _mean_nll(model, _conversation_batches(tokenizer, conversations, batch_size))


def mean_kl_from_base(model, tokenizer, conversations: list[list[dict]], name: str, batch_size: int = 8) -> float:
    """Mean token-level KL(base || adapter) of the next-token distributions over the assistant's tokens.

    0 means the adapter left these answers untouched; it grows as the adapter pulls the model away from the base.
    """
    total, count = 0.0, 0
    for batch in _conversation_batches(tokenizer, conversations, batch_size):
        with persona(model, BASE):
            base, _ = _log_probs_at(model, *batch)
        with persona(model, name):
            adapted, _ = _log_probs_at(model, *batch)
        total += (base.exp() * (base - adapted)).sum().item()
        count += len(base)
    return total / count


def perplexity(model, tokenizer, text: str, name: str, window: int = 256, batch_size: int = 4) -> float:
    """Perplexity of plain text (no chat template), scored in non-overlapping windows of `window` tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = [(ids[i:i + window], [1] * len(ids[i:i + window])) for i in range(0, len(ids), window)]
    batches = (_right_padded(windows[i:i + batch_size], tokenizer.pad_token_id)
               for i in range(0, len(windows), batch_size))
    with persona(model, name):
        return math.exp(_mean_nll(model, batches))


# --- 4. content: ROUGE-L against the reference replies ---------------------------------------------------------------

def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1: the longest common word subsequence, as a share of both texts' lengths."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(references)


# --- putting it together ---------------------------------------------------------------------------------------------

MAX_NEW_TOKENS = 48  # ~35 words: enough for the classifier to judge the voice, short enough for a CPU
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
BLEND_PROMPTS = 16


class NoAdaptersError(FileNotFoundError):
    pass


def ask(prompt: str, system_prompt: str | None = None, reply: str | None = None) -> list[dict]:
    """A one-turn conversation: the user's prompt (after an optional system prompt) and, to score it, a reply."""
    turns = [{"role": "user", "content": prompt}] + ([{"role": "assistant", "content": reply}] if reply else [])
    return with_system_prompt(turns, system_prompt)


def replies_as(model, tokenizer, name: str, prompts: list[str], system_prompt: str | None = None,
               max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 16) -> list[str]:
    """Greedy replies of persona `name` (or "base") to every prompt, generated in left-padded batches."""
    with persona(model, name):
        return generate_replies(model, tokenizer, [ask(p, system_prompt) for p in prompts], batch_size=batch_size,
                                max_new_tokens=max_new_tokens)


def evaluate_persona(model, tokenizer, classifier, name: str, system_prompt: str | None, data_dir=DATA_DIR,
                     max_prompts: int | None = None, max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[dict, list[dict]]:
    """Style, ROUGE-L, persona markers and held-out NLL of one persona for base / prompted / adapter.

    Returns the metrics and, per eval prompt, `{"prompt", "reference", "base", "prompted", "adapter"}`.
    """
    pairs = eval_pairs(name, data_dir, max_prompts)
    prompts, references = [p["prompt"] for p in pairs], [p["reference"] for p in pairs]
    generate = lambda who, prompt: replies_as(model, tokenizer, who, prompts, prompt, max_new_tokens)  # noqa: E731
    replies = {"base": generate(BASE, None), "prompted": generate(BASE, system_prompt),
               "adapter": generate(name, system_prompt)}
    metrics = {f"style_accuracy_{system}": style_accuracy(classifier, replies[system], name) for system in SYSTEMS}
    metrics |= {f"rouge_l_{system}": rouge_l(replies[system], references) for system in SYSTEMS}
    scored = [ask(p, system_prompt, r) for p, r in zip(prompts, references)]  # the same text for both models
    metrics |= {"nll_base": assistant_nll(model, tokenizer, scored, BASE),
                "nll_adapter": assistant_nll(model, tokenizer, scored, name)}
    metrics |= {f"markers_{system}": marker_rates(replies[system]) for system in SYSTEMS}
    rows = [{"prompt": p, "reference": r} | {system: replies[system][i] for system in SYSTEMS}
            for i, (p, r) in enumerate(zip(prompts, references))]
    return metrics, rows


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
    for weight in weights:
        replies = replies_as(model, tokenizer, blend(model, a, b, weight), prompts, system_prompt, max_new_tokens)
        probabilities = style_probabilities(classifier, replies)
        for parent in (a, b):
            sweep["probability"][parent].append(probabilities[parent])
            sweep["share"][parent].append(style_accuracy(classifier, replies, parent))
    return sweep


def check_targets(report: dict) -> dict:
    """Which of the series' targets hold, per persona and for the blend."""
    checks = {name: {"adapter style >= 0.9": m["style_accuracy_adapter"] >= 0.9,
                     "base style <= 0.1": m["style_accuracy_base"] <= 0.1,
                     "adapter above prompting": m["style_accuracy_adapter"] > m["style_accuracy_prompted"],
                     "NLL >= 40% below base": m["nll_adapter"] <= 0.6 * m["nll_base"],
                     "perplexity within 10%": m["ppl_general_adapter"] <= 1.1 * m["ppl_general_base"]}
              for name, m in report["personas"].items()}
    if report.get("blend"):
        weights = report["blend"]["weights"]
        scores = report["blend"]["probability"][report["blend"]["pair"][0]]
        middle = scores[min(range(len(weights)), key=lambda i: abs(weights[i] - 0.5))]
        parents = sorted([scores[0], scores[-1]])
        checks["blend"] = {"50/50 between its parents": parents[0] < middle < parents[1]}
    return checks


def evaluate_loaded(model, tokenizer, system_prompts: dict[str, str | None], classifier=None, data_dir=DATA_DIR,
                    max_prompts: int | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                    blend_pair: tuple[str, str] | None = None, blend_weights=BLEND_WEIGHTS,
                    blend_prompts: int = BLEND_PROMPTS, trap_combinations=("linear", "cat")) -> dict:
    """Every metric for every persona adapter already on `model`, plus a blend sweep of two of them (a report dict).

    `trap_combinations` may add "svd": exact, but one SVD per layer (a minute or more on a 2-core CPU).
    """
    from .blend import blend_system_prompt, compare_combinations

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
        print(f"{name}: evaluated ({time.perf_counter() - start:.0f} s so far)", flush=True)
    pair = blend_pair or tuple(system_prompts)[:2]
    if len(pair) == 2:
        prompts = [p["prompt"] for p in eval_pairs(NEUTRAL, data_dir, min(blend_prompts, max_prompts or blend_prompts))]
        both = blend_system_prompt(*(system_prompts[name] for name in pair))
        report["blend"] = blend_sweep(model, tokenizer, classifier, *pair, prompts, both, blend_weights, max_new_tokens)
        report["blend"]["trap"] = compare_combinations(model, *pair, 0.5, combinations=trap_combinations)
    report["targets"] = check_targets(report)
    report["settings"] = {"max_prompts": max_prompts, "max_new_tokens": max_new_tokens, "decoding": "greedy",
                          "seconds": round(time.perf_counter() - start, 1)}
    return report


def evaluate_adapters(adapters_dir, out_path=None, **options) -> dict:
    """Load the base and every adapter in `adapters_dir`, evaluate them (see `evaluate_loaded` for the options),
    and write the report as JSON to `out_path`."""
    from .inference import attach_adapters, find_adapters
    from .models import load_base_model, load_tokenizer
    from .training import read_record

    adapters = find_adapters(adapters_dir)
    if not adapters:
        raise NoAdaptersError(f"no trained adapters in {adapters_dir}/: train some first (notebook 04 or "
                              "`python -m utils train ...`)")
    records = {name: read_record(path) for name, path in adapters.items()}
    model_id = next(iter(records.values())).get("base_model", "embedded")
    model = attach_adapters(load_base_model(model_id), adapters)
    system_prompts = {name: record.get("system_prompt") for name, record in records.items()}
    report = evaluate_loaded(model, load_tokenizer(model_id), system_prompts, **options)
    report["settings"] |= {"adapters_dir": str(adapters_dir), "base_model": model_id}
    report["adapters"] = {name: str(Path(path).resolve()) for name, path in adapters.items()}  # which folders
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


def run(args) -> int:
    """`python -m utils evaluate`: evaluate every adapter, write the JSON report, print the table and the targets."""
    report = evaluate_adapters(args.adapters_dir, args.out, max_prompts=args.max_prompts,
                               max_new_tokens=args.max_new_tokens)
    print(metrics_table(report).round(3).to_string())
    print(f"style classifier on held-out references: {report['classifier_accuracy_on_references']:.3f}")
    for name, checks in report["targets"].items():
        print(f"{name}: " + ", ".join(f"{target} {'yes' if held else 'NO'}" for target, held in checks.items()))
    print(f"wrote {args.out} in {report['settings']['seconds']:.0f} s")
    return 0
