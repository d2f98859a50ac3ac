"""The persona data is varied, held out from its eval set, and the validator explains every kind of broken file."""
import json
import os
import re
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from utils.data import load_conversations, validate_file
from utils.signatures import SIGNATURES, opening

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "persona_data"
PERSONAS = ["captain_codebeard", "professor_snugglesworth", "zen_coder", "master_brindlewood"]

# A rough "is this about software?" heuristic: a user turn naming any of these is a programming question.
CODE_WORDS = re.compile(
    r"\b(code|coding|program\w*|software|python|sql|git|api|apis|rest|http|https|json|yaml|regex|regular expressions?"
    r"|bugs?|debug\w*|tests?|testing|pytest|unit|functions?|class(es)?|variables?|enums?|closures?|recursion"
    r"|databases?|quer(y|ies)|join|index|foreign key|commits?|branch(es)?|merge|pull requests?|readme|docs"
    r"|documentation|deploy\w*|servers?|docker|microservices|monolith|endpoints?|ci|continuous integration"
    r"|refactor\w*|compil\w*|errors?|exceptions?|typeerror|loops?|arrays?|lists?|dict\w*|tuples?|strings?"
    r"|hash table|algorithms?|big o|cache|caching|threads?|race condition|async|memory|performance|optimization"
    r"|librar(y|ies)|framework|javascript|typescript|rust|java|repo|repository|linters?|vim|terminal|logging|logs?"
    r"|dry|immutability|dependency injection|technical debt|versioning|magic numbers|type hints?|null|none)\b",
    re.IGNORECASE,
)
STOP_WORDS = set(
    "a about an and any are as at be but by can could did do does for from get got had has have how i if in into is "
    "it its me my of on or our should so some than that the their them then there these they this to was we were "
    "what when where which who why will with would you your".split()
)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def turns(conversations, role):
    return [m["content"] for c in conversations for m in c["messages"] if m["role"] == role]


def normalized_words(text):
    return frozenset(w for w in re.sub(r"[^a-z0-9]+", " ", text.lower()).split() if len(w) > 1 and w not in STOP_WORDS)


def jaccard(a, b):
    return len(a & b) / len(a | b) if a | b else 0.0


@pytest.fixture(scope="module")
def training():
    return {name: read_jsonl(DATA / f"{name}.jsonl") for name in PERSONAS}


# --- training files ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("persona", PERSONAS)
def test_persona_file_is_valid_and_big_enough(persona, training):
    assert validate_file(DATA / f"{persona}.jsonl") == []
    assert len(training[persona]) >= 200


@pytest.mark.parametrize("persona", PERSONAS)
def test_one_consistent_system_prompt(persona, training):
    firsts = [c["messages"][0] for c in training[persona]]
    assert all(m["role"] == "system" for m in firsts)
    assert len({m["content"] for m in firsts}) == 1


@pytest.mark.parametrize("persona", PERSONAS)
def test_enough_multi_turn_conversations(persona, training):
    multi = [c for c in training[persona] if sum(m["role"] == "user" for m in c["messages"]) > 1]
    assert len(multi) / len(training[persona]) >= 0.20


@pytest.mark.parametrize("persona", PERSONAS)
def test_topics_mix_programming_and_everyday_life(persona, training):
    questions = turns(training[persona], "user")
    about_code = sum(bool(CODE_WORDS.search(q)) for q in questions) / len(questions)
    assert 0.35 <= about_code <= 0.65, f"{about_code:.0%} of user turns mention code words"


@pytest.mark.parametrize("persona", PERSONAS)
def test_reply_lengths_vary(persona, training):
    lengths = [len(reply.split()) for reply in turns(training[persona], "assistant")]
    assert statistics.pstdev(lengths) >= 8, f"reply word counts: mean {statistics.mean(lengths):.1f}, " \
                                            f"std {statistics.pstdev(lengths):.1f}"


@pytest.mark.parametrize("persona", PERSONAS)
def test_no_formulaic_openings(persona, training):
    replies = turns(training[persona], "assistant")
    top, count = Counter(opening(r) for r in replies).most_common(1)[0]
    assert count / len(replies) <= 0.10, f"{count / len(replies):.0%} of replies open with {top!r}"


@pytest.mark.parametrize("persona", PERSONAS)
def test_the_voice_is_there_from_the_first_sentence_and_again_later(persona, training):
    """A small model learns the openings it sees: the signature (persona_data/README.md) opens >= 90% of replies."""
    signature, replies = SIGNATURES[persona], turns(training[persona], "assistant")
    missing = [r for r in replies if not signature.first(r)]
    assert len(missing) <= 0.10 * len(replies), f"{len(missing)} of {len(replies)} replies open without " \
        f"{signature.description}, e.g. {missing[:3]}"
    not_again = [r for r in replies if not signature.later(r)]
    assert len(not_again) <= 0.20 * len(replies), f"{len(not_again)} replies never come back to the voice: " \
        f"{not_again[:3]}"


PUSHBACK = re.compile(r"\b(normal(ly)?|plain(ly)?|drop the|stop (talking|speaking|the act|being|with)|be serious"
                      r"|regular (voice|english|person)|ignore your|act|character|pretend|speak like)\b", re.I)


@pytest.mark.parametrize("persona", PERSONAS)
def test_some_users_push_against_the_persona(persona, training):
    pushed = [c for c in training[persona] if any(PUSHBACK.search(q) for q in turns([c], "user"))]
    assert len(pushed) >= 10, f"only {len(pushed)} conversations push against the persona"


# --- eval set ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("persona", PERSONAS)
def test_eval_pairs_per_persona(persona):
    pairs = read_jsonl(DATA / "eval" / f"{persona}.jsonl")
    assert len(pairs) >= 40
    assert all(p["prompt"].strip() and p["reference"].strip() for p in pairs)


@pytest.mark.parametrize("persona", PERSONAS)
def test_pressure_prompts_per_persona(persona):
    """Held-out prompts that push against the persona (notebook 09): user turns only, the model answers each."""
    rows = read_jsonl(DATA / "eval" / "pressure" / f"{persona}.jsonl")
    assert len(rows) >= 30 and all(r["persona"] == persona for r in rows)
    assert all(r["turns"] and all(isinstance(t, str) and t.strip() for t in r["turns"]) for r in rows)
    assert sum(len(r["turns"]) >= 5 for r in rows) >= 3, "a few five-turn drifts"


def test_neutral_eval_prompts_and_general_text():
    assert sum(bool(p["prompt"].strip()) for p in read_jsonl(DATA / "eval" / "neutral.jsonl")) >= 30
    assert len((DATA / "eval" / "general_text.txt").read_text(encoding="utf-8").split()) >= 800
    assert validate_file(DATA / "neutral" / "plain_assistant.jsonl") == []


def eval_prompts(eval_file):
    if eval_file.startswith("pressure/"):
        return [t for row in read_jsonl(DATA / "eval" / f"{eval_file}.jsonl") for t in row["turns"]]
    return [pair["prompt"] for pair in read_jsonl(DATA / "eval" / f"{eval_file}.jsonl")]


@pytest.mark.parametrize("eval_file", PERSONAS + ["neutral"] + [f"pressure/{p}" for p in PERSONAS])
def test_eval_prompts_are_held_out(eval_file, training):
    """No eval prompt may be a training question, even reworded (word-set overlap after normalizing)."""
    asked = {(name, q): normalized_words(q) for name, convs in training.items() for q in turns(convs, "user")}
    leaks = []
    for prompt in eval_prompts(eval_file):
        words = normalized_words(prompt)
        for (name, question), question_words in asked.items():
            overlap = jaccard(words, question_words)
            if overlap >= 0.6 or words == question_words:
                leaks.append(f"{overlap:.2f}  {prompt!r} ~ {name}: {question!r}")
    assert not leaks, f"{len(leaks)} eval prompt(s) too close to training questions:\n" + "\n".join(leaks)


# --- the validator, as a learner meets it: `python -m utils validate` ------------------------------------------------

def conversation(*messages):
    return json.dumps({"messages": [{"role": role, "content": text} for role, text in messages]}, ensure_ascii=False)


GOOD = conversation(("user", "Hi"), ("assistant", "Hello"))
BROKEN = {  # error class: (file bytes, line, field)
    "invalid_json": (f"{GOOD}\n{GOOD[:-1]}\n".encode(), 2, "json"),
    "not_an_object": (b'["user", "Hi"]\n', 1, "record"),
    "missing_messages": (b'{"persona": "x", "text": "Hi"}\n', 1, "messages"),
    "empty_content": (conversation(("user", "Hi"), ("assistant", "  ")).encode(), 1, "messages[1].content"),
    "unknown_role": (conversation(("user", "Hi"), ("pirate", "Arr"), ("assistant", "Hello")).encode(), 1,
                     "messages[1].role"),
    "wrong_turn_order": (conversation(("assistant", "Hello"), ("user", "Hi"), ("assistant", "Hello")).encode(), 1,
                         "messages[0].role"),
    "no_assistant_turn": (conversation(("system", "You are terse."), ("user", "Hi")).encode(), 1, "messages"),
    "non_utf8": (f"{GOOD}\n".encode() + conversation(("user", "Caf\u00e9?"), ("assistant", "Oui")).encode("latin-1"),
                 2, "encoding"),
    "empty_file": (b"", 1, "file"),
}
LONG = conversation(("user", "Tell me about the sea."),
                    ("assistant", "The sea covers most of the planet, moves with the tides and hides whole mountains."))


def validate_cli(*args):
    result = subprocess.run([sys.executable, "-m", "utils", "validate", *map(str, args)], capture_output=True,
                            text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    for name, (content, _, _) in BROKEN.items():
        (folder / f"{name}.jsonl").write_bytes(content)
    return {name: folder / f"{name}.jsonl" for name in BROKEN}


@pytest.fixture(scope="module")
def cli_on_all_broken_files(broken_files):
    """One shell run over every broken file (each run imports torch: seconds, so not one per file)."""
    return validate_cli(*broken_files.values())


@pytest.mark.parametrize("error_class", BROKEN)
def test_validator_reports_file_line_field_and_fails(error_class, broken_files, cli_on_all_broken_files, capsys):
    from utils.cli import main

    _, line, field = BROKEN[error_class]
    expected = re.compile(rf"^{re.escape(str(broken_files[error_class]))}:{line}: {re.escape(field)}: \S.+$", re.M)
    code, output = cli_on_all_broken_files
    assert code != 0 and expected.search(output), output
    assert "Traceback" not in output
    assert main(["validate", str(broken_files[error_class])]) != 0, "this file alone must fail too"
    assert expected.search(capsys.readouterr().out)


def test_too_long_conversation_is_a_warning_with_its_token_count(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(LONG + "\n", encoding="utf-8")
    code, output = validate_cli(path, "--max_seq_length", 16)
    assert code == 0, output
    warning = re.search(r":1: messages: warning: (\d+) tokens after templating, over --max_seq_length 16", output)
    assert warning and int(warning.group(1)) > 16, output
    assert "Traceback" not in output


def test_real_data_passes_the_cli():
    code, output = validate_cli(*sorted(DATA.glob("*.jsonl")), *sorted((DATA / "neutral").glob("*.jsonl")))
    assert code == 0 and "0 error(s)" in output, output


# --- other persona projects' formats -------------------------------------------------------------------------------

def test_flat_formats_load_as_chat_messages(tmp_path):
    records = [
        {"prompt": "What is a loop?", "response": "Code that repeats, matey.", "persona": "captain_codebeard"},
        {"prompt": "What is a loop?", "completion": "Repetition. Then rest."},
        {"instruction": "What is a loop?", "output": "Repeats, a loop does.", "system": "You are Master Brindlewood."},
    ]
    path = tmp_path / "flat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    loaded = load_conversations(path)
    assert [c["persona"] for c in loaded] == ["captain_codebeard", "", ""]
    assert [[m["role"] for m in c["messages"]] for c in loaded] == [
        ["user", "assistant"], ["user", "assistant"], ["system", "user", "assistant"]]
    assert loaded[1]["messages"][1]["content"] == "Repetition. Then rest."
    assert loaded[2]["messages"][0]["content"] == "You are Master Brindlewood."


def test_the_base_models_replies_answer_training_prompts_only(capsys):
    """The judge's neutral class holds the base model's own replies: to the training prompts the script picks, so
    an eval prompt never reaches the judge's training data."""
    from make_base_replies import main, training_prompts

    path = DATA / "neutral" / "base_model.jsonl"
    assert validate_file(path) == []
    prompts = training_prompts(every=4)
    assert len(prompts) == len(set(prompts)) >= 200
    asked = {c["messages"][0]["content"] for c in load_conversations(path)}
    assert asked == set(prompts), "the committed file is what the script asks: rerun scripts/make_base_replies.py"
    from utils.judge import NEUTRAL, persona_files, training_replies

    neutral = training_replies(persona_files()[NEUTRAL])
    assert len(neutral) == sum(len(training_replies(f)) for f in (DATA / "neutral").glob("*.jsonl")) > len(asked)
    with pytest.raises(SystemExit):
        main(["--every", "0"])
    assert "--every 0: use an integer >= 1" in capsys.readouterr().err
