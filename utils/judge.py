"""The style judge: a classifier that tells the personas (and a plain assistant) apart from a reply's text.

Character 2-4-grams (TF-IDF) and a logistic regression, fitted on the training replies of every persona plus the
neutral class: every file in `persona_data/neutral/`, a plain assistant's written replies and the base model's own
(`scripts/make_base_replies.py`), so that the base's register is not mistaken for a persona. Character n-grams see
vocabulary ("matey"), contractions ("lookin'"), punctuation and rhythm alike, with no tokenizer to choose. It must
prove itself on held-out references before it scores anything.
"""
import json
from pathlib import Path

from .data import DATA_DIR, load_conversations

NEUTRAL = "neutral"


def persona_files(data_dir=DATA_DIR) -> dict[str, Path]:
    """Training data by class: every persona's file, plus the "neutral" class's folder."""
    data_dir = Path(data_dir)
    personas = {p.stem: p for p in sorted(data_dir.glob("*.jsonl"))}
    return personas | {NEUTRAL: data_dir / "neutral"}


def training_replies(path) -> list[str]:
    """The assistant replies of a training file, or of every file in a folder."""
    files = sorted(Path(path).glob("*.jsonl")) if Path(path).is_dir() else [path]
    return [m["content"] for f in files for c in load_conversations(f) for m in c["messages"]
            if m["role"] == "assistant"]


def eval_pairs(name: str, data_dir=DATA_DIR, max_prompts: int | None = None) -> list[dict]:
    """Held-out `{"prompt", "reference"}` pairs of a persona (or of "neutral"); `max_prompts` of them spread evenly
    over the file, so a subset keeps its mix (the files run code questions first, everyday ones after)."""
    lines = (Path(data_dir) / "eval" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    pairs = [json.loads(line) for line in lines if line.strip()]
    n = len(pairs) if max_prompts is None else min(max_prompts, len(pairs))
    return [pairs[i * len(pairs) // n] for i in range(n)]


def train_style_classifier(data_dir=DATA_DIR):
    """Fit the judge on every class's training replies (a second or two)."""
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
