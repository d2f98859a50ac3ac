"""The style judge: a classifier that tells the personas (and a plain assistant) apart from a reply's text.

A logistic regression on words and word pairs (TF-IDF), punctuation included, fitted on the training replies of
every persona plus the neutral class: every file in `persona_data/neutral/`, a plain assistant's written replies and
the base model's own (`scripts/make_base_replies.py`), so that the base's register is not mistaken for a persona.
It reads the voice, not the topic: a word that fewer than 2% of every class's replies use ("tripod", "salmon") is
read as "_", so a pirate's answer is not given to another persona whose data happens to cover its topic; "matey",
"be", "a cat's", the sage's closing "is ." and Zen's short "_ ." stay. Every class weighs the same, though the
neutral class has the most replies. It must prove itself on held-out references before it scores anything.
"""
import functools
import json
import re
from collections import Counter
from pathlib import Path

from .data import DATA_DIR, load_conversations

NEUTRAL = "neutral"
WORD = re.compile(r"[a-z']+")
JUDGE_READS = "words and punctuation, topic words masked"  # recorded with sweep results
VOICE_SHARE = 0.02  # a word is part of a voice if this share of some class's replies use it; rarer ones are topic


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


def voice_vocabulary(replies_by_class: dict[str, list[str]], share: float = VOICE_SHARE) -> set[str]:
    """Words at least `share` of some class's replies use: a voice's words recur whatever the question, a topic's
    come with a few questions only."""
    vocabulary = set()
    for replies in replies_by_class.values():
        counts = Counter(word for reply in replies for word in set(WORD.findall(reply.lower())))
        vocabulary |= {word for word, n in counts.items() if n >= share * len(replies)}
    return vocabulary


def mask_topic(text: str, vocabulary: set[str]) -> str:
    """A reply as the judge reads it: lower case, every word outside the voice vocabulary replaced by "_"."""
    return WORD.sub(lambda word: word[0] if word[0] in vocabulary else "_", text.lower())


def train_style_classifier(data_dir=DATA_DIR, voice_share: float = VOICE_SHARE):
    """Fit the judge on every class's training replies (a second or two); `voice_share=0` reads every word.
    `classifier.named_steps["tfidfvectorizer"].preprocessor(reply)` shows what it reads."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    replies = {name: training_replies(path) for name, path in persona_files(data_dir).items()}
    texts = [reply for name in replies for reply in replies[name]]
    labels = [name for name in replies for _ in replies[name]]
    read = functools.partial(mask_topic, vocabulary=voice_vocabulary(replies, voice_share))
    vectorizer = TfidfVectorizer(preprocessor=read, token_pattern=rf"{WORD.pattern}|[^\sa-z']", ngram_range=(1, 2),
                                 sublinear_tf=True, min_df=2)
    classifier = make_pipeline(vectorizer, LogisticRegression(C=10, max_iter=2000, class_weight="balanced"))
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
