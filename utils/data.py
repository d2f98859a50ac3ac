"""Persona conversations: load them (several formats) and validate them with file:line messages."""
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import PersonaLoraError

DATA_DIR = Path(__file__).resolve().parents[1] / "persona_data"  # the series' persona data
ROLES = ("system", "user", "assistant")
# Formats used by other persona projects, converted to chat messages: (prompt field, reply field).
FLAT_FORMATS = (("prompt", "response"), ("prompt", "completion"), ("instruction", "output"))


@dataclass
class Problem:
    file: str
    line: int
    field: str
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self):
        tag = "" if self.severity == "error" else "warning: "
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {tag}{self.message}"


class DataError(PersonaLoraError):
    """Invalid persona data. str() lists every problem as `file:line: field: message`."""

    def __init__(self, problems):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def to_messages(record: dict) -> list[dict] | None:
    """Chat messages for any supported record format, or None when the format is not recognised."""
    if "messages" in record:
        return record["messages"]
    for prompt_key, reply_key in FLAT_FORMATS:
        if prompt_key in record and reply_key in record:
            messages = [{"role": "user", "content": record[prompt_key]}, {"role": "assistant", "content": record[reply_key]}]
            if record.get("system"):
                messages.insert(0, {"role": "system", "content": record["system"]})
            return messages
    return None


def _check_messages(messages, where) -> list[Problem]:
    file, line = where
    if not isinstance(messages, list) or not messages:
        return [Problem(file, line, "messages", "must be a non-empty list of {\"role\", \"content\"} objects")]
    problems = []
    expected = "user"
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(Problem(file, line, field, "must be an object with \"role\" and \"content\""))
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(Problem(file, line, f"{field}.role",
                                    f"unknown role {role!r}; use one of {', '.join(ROLES)}"))
            continue
        if not isinstance(content, str) or not content.strip():
            problems.append(Problem(file, line, f"{field}.content", "missing or empty; write the turn's text"))
        if role == "system":
            if i != 0:
                problems.append(Problem(file, line, f"{field}.role", "a system message may only come first"))
            continue
        if role != expected:
            problems.append(Problem(file, line, f"{field}.role",
                                    f"expected {'an' if expected == 'assistant' else 'a'} {expected} turn here; "
                                    "turns must alternate user, assistant, user, ..."))
        expected = "assistant" if role == "user" else "user"
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append(Problem(file, line, "messages", "no assistant turn; add the reply the persona should give"))
    elif isinstance(messages[-1], dict) and messages[-1].get("role") != "assistant":
        problems.append(Problem(file, line, f"messages[{len(messages) - 1}].role",
                                "the last turn must be the assistant's reply (a trailing user turn has nothing to learn)"))
    return problems


def read_records(path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Parse a JSONL file into (line number, record) pairs, collecting every problem instead of raising."""
    path = Path(path)
    name = str(path)
    if path.is_dir():
        return [], [Problem(name, 0, "file", "is a folder; give the .jsonl files in it (e.g. folder/*.jsonl)")]
    if not path.is_file():
        return [], [Problem(name, 0, "file", "not found; check the path")]
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is fine
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        return [], [Problem(name, line, "encoding", f"byte {raw[error.start]:#x} is not UTF-8; save the file as UTF-8")]
    records, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(Problem(name, number, "json", f"invalid JSON ({error.msg} at column {error.colno})"))
            continue
        if not isinstance(record, dict):
            problems.append(Problem(name, number, "record",
                                    f"expected a JSON object, got {type(record).__name__}"))
            continue
        records.append((number, record))
    if not records and not problems:
        problems.append(Problem(name, 1, "file", "empty; add one JSON conversation per line"))
    return records, problems


def validate_file(path, tokenizer=None, max_seq_length: int | None = None) -> list[Problem]:
    """Every problem in a persona data file; with a tokenizer, also warn about conversations over `max_seq_length`."""
    records, problems = read_records(path)
    for number, record in records:
        messages = to_messages(record)
        if messages is None:
            formats = ", ".join(f'"{a}"/"{b}"' for a, b in FLAT_FORMATS)
            problems.append(Problem(str(path), number, "messages",
                                    f"missing; give \"messages\" (chat format) or one of {formats}"))
            continue
        found = _check_messages(messages, (str(path), number))
        problems += found
        if not found and tokenizer is not None and max_seq_length:
            length = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
            if length > max_seq_length:
                problems.append(Problem(str(path), number, "messages",
                                        f"{length} tokens after templating, over --max_seq_length {max_seq_length}: "
                                        "the end will be cut off; shorten it or raise --max_seq_length", "warning"))
    return problems


def load_conversations(path, persona: str | None = None) -> list[dict]:
    """Validated conversations as `{"persona", "messages", "line"}`; raises DataError listing every problem."""
    records, _ = read_records(path)
    errors = [p for p in validate_file(path) if p.severity == "error"]
    if errors:
        raise DataError(errors)
    conversations = [{"persona": record.get("persona", ""), "messages": to_messages(record), "line": number}
                     for number, record in records]
    if persona:
        conversations = [c for c in conversations if c["persona"] in (persona, "")]
        if not conversations:
            raise DataError([Problem(str(path), 0, "persona", f"no conversation has persona {persona!r}")])
    return conversations


def system_prompt_of(conversations: list[dict]) -> str | None:
    """The persona's system prompt: the most common system message in its conversations."""
    prompts = Counter(c["messages"][0]["content"] for c in conversations if c["messages"][0]["role"] == "system")
    return prompts.most_common(1)[0][0] if prompts else None
