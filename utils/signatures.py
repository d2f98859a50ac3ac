"""Each persona's signature: the marker a reader can check by eye, in the first sentence and again later.

Cruder than the style judge (utils/judge.py), and meant to be: `persona_data/README.md` describes each one, the
data tests hold every training reply to it, and notebook 06 counts it in generated replies.
"""
import re
from dataclasses import dataclass
from typing import Callable

PIRATE_WORDS = re.compile(r"\b(?:ye|yer|ye've|ye'll|ye're|matey|mateys|aye|arr+|ahoy|avast|hearties|landlubbers?"
                          r"|shipmates?|savvy|cap'n|me hearty|blimey|scallywags?)\b|\b\w+in'(?!\w)", re.I)
CAT_WORDS = re.compile(r"\b(?:cats?|feline\w*|kittens?|kitty|paws?|pawing|purr\w*|whiskers?|meow\w*|pounc\w*|mice"
                       r"|mouse|yarn|catnip|claws?|tabby|tomcat|litter box|scratching post|sunbeams?)\b", re.I)
# An inverted clause ends on its verb: "Simple, this one is." "Commit often, you must." "Patience, it needs."
# Or the complement comes first and a short subject-verb clause closes the sentence: "Fixed, a tuple remains."
FRONTED = re.compile(r",\s+(?:[\w']+\s+){1,3}[\w']+[.!?]*$")
VERB_LAST = re.compile(r"(?:\b(?:is|are|was|were|am|be|been|can|could|may|might|must|will|would|shall|should|does"
                       r"|do|did|has|have|had)|\b(?:it|you|they|we|one|this|that|i|he|she|these|those)\s+[\w']+)"
                       r"[.!?]*$", re.I)
ZEN_FIRST_WORDS, ZEN_MEAN_WORDS = 8, 9


def sentences(text: str) -> list[str]:
    """Sentences, split after . ! or ? and a space, where the next one does not start in lower case."""
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[^a-z])", text.strip()) if s.strip()] or [""]


def words(sentence: str) -> list[str]:
    return re.findall(r"[\w'`]+", sentence)


def opening(text: str, n: int = 2) -> str:
    """The first n words, lowercased, punctuation dropped: "Arr, matey!" -> "arr matey"."""
    return " ".join(re.findall(r"[\w']+", text.lower())[:n])


@dataclass(frozen=True)
class Signature:
    kind: str                      # vocabulary, rhythm or syntax
    description: str
    in_sentence: Callable[[str], bool]

    def first(self, text: str) -> bool:
        """The voice is there in the first sentence."""
        return self.in_sentence(sentences(text)[0])

    def later(self, text: str) -> bool:
        """The voice comes back after the first sentence (True for one-sentence replies)."""
        rest = sentences(text)[1:]
        return not rest or any(map(self.in_sentence, rest))


def _short(sentence: str) -> bool:
    return len(words(sentence)) <= ZEN_FIRST_WORDS


def _inverted(sentence: str) -> bool:
    sentence = sentence.strip().rstrip("\"')")
    return bool(VERB_LAST.search(sentence) or FRONTED.search(sentence))


SIGNATURES = {
    "captain_codebeard": Signature("vocabulary", "pirate words (ye, yer, matey, aye, arr, -in')",
                                   lambda s: bool(PIRATE_WORDS.search(s))),
    "professor_snugglesworth": Signature("vocabulary", "cat words (cat, feline, paw, whiskers, purr, pounce, ...)",
                                         lambda s: bool(CAT_WORDS.search(s))),
    "zen_coder": Signature("rhythm", f"short sentences (<= {ZEN_FIRST_WORDS} words)", _short),
    "master_brindlewood": Signature("syntax", "inverted order, the verb last (\"Simple, this one is.\")", _inverted),
}


def mean_sentence_words(text: str) -> float:
    parts = sentences(text)
    return sum(len(words(s)) for s in parts) / len(parts)


def signature_rates(texts: list[str]) -> dict[str, float]:
    """Share of texts whose first sentence shows each persona's signature."""
    return {name: sum(map(signature.first, texts)) / len(texts) for name, signature in SIGNATURES.items()}
