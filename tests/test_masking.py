"""Loss masks: the hand-made ones (notebook 02's lesson) equal the library's on every persona file, and keep every
<|im_end|>."""
import copy

import pytest

from conftest import PERSONA_FILES, ROOT
from utils.data import DataError, load_conversations
from utils.masking import (CHATML_TRAINING_TEMPLATE, assistant_mask, check_masks, labels_from_mask,
                           tokenize_with_assistant_mask, training_chat_template)

CAPTAIN = ROOT / "persona_data" / "captain_codebeard.jsonl"


def assistant_turns(messages):
    return sum(m["role"] == "assistant" for m in messages)


def library_mask(tokenizer, messages):
    return assistant_mask(tokenizer, messages, training_chat_template(tokenizer))


def runs_of_ones(mask):
    """(start, end) token ranges where the mask is 1."""
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("path", PERSONA_FILES, ids=lambda p: p.stem)
def test_hand_mask_equals_the_library_generation_mask(tokenizer, path):
    conversations = load_conversations(path)
    assert any(assistant_turns(c["messages"]) > 1 for c in conversations), "multi-turn conversations are covered"
    for conversation in conversations:
        hand = tokenize_with_assistant_mask(tokenizer, conversation["messages"])
        assert hand == library_mask(tokenizer, conversation["messages"]), f"{path.name}:{conversation['line']}"


def test_chatml_training_template_renders_like_the_tokenizers_own(tokenizer):
    assert training_chat_template(tokenizer) == CHATML_TRAINING_TEMPLATE
    for conversation in load_conversations(CAPTAIN):
        messages = conversation["messages"]
        for rendered, kwargs in [(messages, {}), (messages[:-1], {"add_generation_prompt": True})]:
            ours = tokenizer.apply_chat_template(rendered, tokenize=False, chat_template=CHATML_TRAINING_TEMPLATE,
                                                 **kwargs)
            assert ours == tokenizer.apply_chat_template(rendered, tokenize=False, **kwargs)


@pytest.mark.parametrize("path", PERSONA_FILES, ids=lambda p: p.stem)
def test_each_assistant_span_ends_with_the_end_of_turn_token(tokenizer, path):
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    for conversation in load_conversations(path):
        encoded = tokenize_with_assistant_mask(tokenizer, conversation["messages"])
        ids, spans = encoded["input_ids"], runs_of_ones(encoded["assistant_masks"])
        assert len(spans) == assistant_turns(conversation["messages"])
        for start, end in spans:
            assert ids[end - 1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
            assert ids[start - len(header):start] == header, "a reply starts right after the assistant header"


def test_system_user_and_header_tokens_carry_no_loss(tokenizer):
    messages = next(c["messages"] for c in load_conversations(CAPTAIN) if assistant_turns(c["messages"]) == 2)
    encoded = tokenize_with_assistant_mask(tokenizer, messages)
    labels = labels_from_mask(encoded["input_ids"], encoded["assistant_masks"])
    offsets = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False,
                        return_offsets_mapping=True)["offset_mapping"]
    block_ends = [len(tokenizer.apply_chat_template(messages[:i], tokenize=False)) for i in range(1, len(messages) + 1)]
    for message, start, end in zip(messages, [0, *block_ends], block_ends):
        in_block = [label for label, (lo, hi) in zip(labels, offsets) if start <= lo and hi <= end]
        if message["role"] == "assistant":
            assert in_block[:3] == [-100] * 3, "<|im_start|> assistant \\n is given at inference, not learned"
            assert in_block[-2:] == [tokenizer.eos_token_id, -100], "<|im_end|> is learned, the newline after not"
        else:
            assert in_block and set(in_block) == {-100}, f"{message['role']} tokens must carry no loss"


@pytest.fixture(scope="module")
def sft_labels(tokenizer, tmp_path_factory):
    """Labels SFTTrainer prepares (assistant_only_loss) for three conversations: 1, 2 and 3 assistant turns."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from utils.models import load_base_model

    everything = [c for path in PERSONA_FILES for c in load_conversations(path)]
    conversations = [next(c for c in everything if assistant_turns(c["messages"]) == n) for n in (1, 2, 3)]
    trl_tokenizer = copy.deepcopy(tokenizer)  # SFTTrainer changes its tokenizer; keep the shared fixture as it is
    trl_tokenizer.chat_template = training_chat_template(tokenizer)
    args = SFTConfig(output_dir=str(tmp_path_factory.mktemp("sft")), assistant_only_loss=True, max_length=512,
                     report_to="none", use_cpu=True)
    trainer = SFTTrainer(model=load_base_model("embedded"), args=args, processing_class=trl_tokenizer,
                         train_dataset=Dataset.from_list([{"messages": c["messages"]} for c in conversations]))
    return conversations, trainer.train_dataset


def test_sft_trainer_labels_equal_hand_made_labels(tokenizer, sft_labels):
    conversations, prepared = sft_labels
    assert len(prepared) == 3
    for conversation, row in zip(conversations, prepared):
        hand = tokenize_with_assistant_mask(tokenizer, conversation["messages"])
        assert row["input_ids"] == hand["input_ids"]
        assert row["labels"] == labels_from_mask(hand["input_ids"], hand["assistant_masks"])


def test_padding_never_erases_the_end_of_turn_label(tokenizer, sft_labels):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    assert tokenizer.pad_token_id == tokenizer.eos_token_id, "the pitfall this guards against is live for SmolLM2"
    conversations, prepared = sft_labels
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(list(prepared))
    assert int((batch["labels"] == tokenizer.eos_token_id).sum()) == 1 + 2 + 3
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def first_assistant_token(tokenizer, messages):
    return tokenize_with_assistant_mask(tokenizer, messages)["assistant_masks"].index(1)


def test_check_masks_names_file_and_conversation_cut_off_by_truncation(tokenizer):
    conversations = load_conversations(CAPTAIN)
    check_masks(tokenizer, conversations, CAPTAIN, 384)  # the series' max_seq_length: every reply survives
    starts = {c["line"]: first_assistant_token(tokenizer, c["messages"]) for c in conversations}
    too_short = max(starts.values())  # only the conversation(s) with the longest prompt lose every reply
    with pytest.raises(DataError) as raised:
        check_masks(tokenizer, conversations, CAPTAIN, too_short)
    failing = {line for line, start in starts.items() if start >= too_short}
    assert {p.line for p in raised.value.problems} == failing and len(failing) < len(conversations)
    message = str(raised.value)
    for conversation in (c for c in conversations if c["line"] in failing):
        first_user = next(m["content"] for m in conversation["messages"] if m["role"] == "user")
        line = conversation["line"]
        assert f"{CAPTAIN}:{line}: messages: conversation starting {first_user[:40]!r}" in message
    assert f"--max_seq_length {too_short}" in message
