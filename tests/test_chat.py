"""The persona chat's logic and its widget, driven without a browser (real model, real adapter, real ipywidgets)."""
import html

import pytest

from utils.chat import PersonaChat, chat_widget
from utils.inference import BASE, attach_adapters
from utils.models import load_base_model
from utils.adapters import read_record

PIRATE = "captain_codebeard"


@pytest.fixture(scope="module")
def chat(pirate_adapter, tokenizer):
    model = attach_adapters(load_base_model(), {PIRATE: pirate_adapter})
    return PersonaChat(model, tokenizer, {PIRATE: read_record(pirate_adapter)["system_prompt"]}, max_new_tokens=16)


@pytest.fixture(autouse=True)
def fresh(chat):
    for name in chat.personas:
        chat.histories[name] = []
    chat.switch(PIRATE)


def test_send_records_the_turn_for_the_current_persona(chat):
    reply = chat.send("What is a good variable name?")
    assert reply and [m["role"] for m in chat.histories[PIRATE]] == ["user", "assistant"]
    assert chat.histories[BASE] == []


def test_switch_keeps_one_history_per_persona_and_clear_empties_only_the_current(chat):
    chat.send("Hello")
    chat.switch(BASE)
    chat.send("Hello")
    chat.clear()
    assert chat.histories[BASE] == [] and len(chat.histories[PIRATE]) == 2
    with pytest.raises(KeyError, match="unknown persona"):
        chat.switch("nobody")


def test_empty_and_very_long_input(chat):
    assert chat.send("   ") == "Type a message first." and chat.histories[PIRATE] == []
    message, notice = chat.prepare_input("x" * 5000)
    assert len(message) == chat.max_input_chars and "cut to its first" in notice
    assert chat.send("tell me " * 400)
    assert len(chat.histories[PIRATE][0]["content"]) == chat.max_input_chars


def test_switching_persona_while_a_reply_streams(chat):
    chat.send("Tell me about ships.", on_piece=lambda piece: chat.switch(BASE))
    assert chat.current == BASE
    assert len(chat.histories[PIRATE]) == 2 and chat.histories[BASE] == []


def test_side_by_side_answers_as_base_and_persona(chat):
    replies = chat.side_by_side("How do I start a garden?")
    assert set(replies) == {BASE, PIRATE} and all(replies.values())


def test_widget_send_switch_clear_and_side_by_side(chat):
    panel = chat_widget(chat)
    c = panel.controls
    c["send"].click()
    assert "Type a message first." in c["log"].value
    c["text"].value = "Ahoy, any tips on tests?"
    c["send"].click()
    assert "Ahoy, any tips on tests?" in c["log"].value and c["text"].value == "" and not c["send"].disabled
    assert html.escape(chat.histories[PIRATE][-1]["content"]) in c["log"].value
    c["persona"].value = BASE
    assert chat.current == BASE and "Ahoy" not in c["log"].value
    c["persona"].value = PIRATE
    c["side"].value = True
    c["text"].value = "And on naming?"
    c["send"].click()
    assert "And on naming?" in c["base_log"].value and "And on naming?" in c["log"].value
    c["clear"].click()
    assert chat.histories[PIRATE] == [] and "And on naming?" not in c["log"].value
