"""A persona the series has never seen, trained from the command line with no code change: flat
{"prompt", "response", "persona"} rows of two personas mixed in one file, one of them picked by a name with spaces.
Its held-out replies must open in its voice (the butler's markers, in the first sentence)."""
import json
import re

from conftest import ROOT

DATA = ROOT / "tests" / "data" / "mixed_personas.jsonl"
HELD_OUT = ROOT / "tests" / "data" / "butler_heldout.json"
BUTLER = "Bartholomew the Butler"
MARKERS = ("sir", "madam", "if i may", "very good", "at your service", "indeed", "i dare say", "most", "splendid")


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].lower()


def in_voice(reply: str) -> bool:
    return any(re.search(rf"\b{marker}\b", first_sentence(reply)) for marker in MARKERS)


def test_the_data_opens_in_the_butlers_voice_and_mixes_two_personas():
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    butler = [row for row in rows if row["persona"] == BUTLER]
    assert {row["persona"] for row in rows} == {BUTLER, "Robo Reporter"} and len(butler) >= 150
    assert sum(in_voice(row["response"]) for row in butler) >= 0.95 * len(butler)
    assert not set(json.loads(HELD_OUT.read_text())) & {row["prompt"] for row in rows}, "held-out prompts stay out"


def test_a_new_persona_from_mixed_flat_data_takes_hold(tmp_path, capsys):
    from utils.adapters import final_adapter_dir, read_record
    from utils.cli import main
    from utils.inference import generate_replies
    from utils.loading import load_personas

    assert main(["train", "--dataset_path", str(DATA), "--persona_name", BUTLER, "--output_dir", str(tmp_path)]) == 0
    adapter = final_adapter_dir(tmp_path, BUTLER)
    record = read_record(adapter)
    assert record["persona"] == BUTLER and record["system_prompt"] is None
    personas = load_personas(adapter)
    prompts = json.loads(HELD_OUT.read_text())[:10]
    replies = generate_replies(personas.model, personas.tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                               max_new_tokens=48)
    voiced = sum(map(in_voice, replies))
    print(f"{voiced}/{len(replies)} held-out replies open in the butler's voice:", *replies[:3], sep="\n")
    assert voiced >= 9, replies
