"""Which tokens carry the loss: only the assistant's replies and the end-of-turn token that closes each one.

Training and scoring use the library's mask: `apply_chat_template(..., return_assistant_tokens_mask=True)` with a
template whose `{% generation %}` markers wrap what the assistant produces (trl trains on exactly that). Notebook 02
builds the same mask by hand from character spans (`tokenize_with_assistant_mask`); a test checks they agree.
"""
from .data import DataError, Problem


def assistant_char_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation; return the text and, per assistant turn, the character span the model must produce.

    The span of turn i starts where the template's generation prompt ends (render messages[:i] with
    add_generation_prompt) and runs through the reply and the special token that closes the turn
    (<|im_end|> in ChatML, <|eot_id|> in Llama 3, <|end|> in Phi-3).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    specials = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        turn = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(turn) and turn.startswith(prompt)):
            raise ValueError("this chat template is not prefix-preserving: an earlier turn renders differently once "
                             "later turns follow, so no span can be cut out of it")
        end = turn.index(message["content"], len(prompt)) + len(message["content"])
        end += next((len(t) for t in specials if turn.startswith(t, end)), 0)
        spans.append((len(prompt), end))
    return text, spans


def tokenize_with_assistant_mask(tokenizer, messages) -> dict:
    """input_ids plus assistant_masks (1 = the model learns this token), built by hand from character spans: the
    lesson of notebook 02. Production code uses `assistant_mask`, the library's."""
    text, spans = assistant_char_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(end > start and any(lo <= start and end <= hi for lo, hi in spans))
            for start, end in encoded["offset_mapping"]]
    return {"input_ids": encoded["input_ids"], "assistant_masks": mask}


def labels_from_mask(input_ids, mask, ignore_index: int = -100) -> list[int]:
    return [token if keep else ignore_index for token, keep in zip(input_ids, mask)]


def show_masked(tokenizer, input_ids, labels, blank: str = "·") -> str:
    """Decode a training example, blanking every token that carries no loss, to see what the model learns."""
    return "".join(tokenizer.decode([t]) if label != -100 else blank for t, label in zip(input_ids, labels))


# ChatML (SmolLM2, Qwen) with trl's `{% generation %}` markers around what the assistant must produce: its reply and
# the end-of-turn token. It renders exactly like SmolLM2's own template (a test checks), so masks line up.
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def training_chat_template(tokenizer) -> str:
    """A template with `{% generation %}` markers for trl's assistant_only_loss, rendering like the model's own."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return tokenizer.chat_template
    try:
        patched = get_training_chat_template(tokenizer)
        return patched or tokenizer.chat_template
    except ValueError:
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        ours = tokenizer.apply_chat_template(probe, tokenize=False, chat_template=CHATML_TRAINING_TEMPLATE)
        if ours == tokenizer.apply_chat_template(probe, tokenize=False):
            return CHATML_TRAINING_TEMPLATE
        raise ValueError(
            "this model's chat template has no {% generation %} markers and is not one trl or this series can "
            "patch; add the markers around the assistant's reply (see notebooks/02 and notebooks/TROUBLESHOOTING.md)"
        ) from None


def assistant_mask(tokenizer, messages, template: str) -> dict:
    """input_ids and assistant_masks as transformers (and so trl) derive them from the template's markers."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                        chat_template=template)
    return {"input_ids": list(out["input_ids"]), "assistant_masks": list(out["assistant_masks"])}


def check_masks(tokenizer, conversations, path, max_seq_length, template: str | None = None):
    """Every conversation must keep at least one assistant token after truncation, or it teaches nothing."""
    template = template or training_chat_template(tokenizer)
    problems = []
    for conversation in conversations:
        mask = assistant_mask(tokenizer, conversation["messages"], template)["assistant_masks"][:max_seq_length]
        if not any(mask):
            first_user = next(m["content"] for m in conversation["messages"] if m["role"] == "user")
            problems.append(Problem(str(path), conversation["line"], "messages",
                                    f"conversation starting {first_user[:40]!r}: "
                                    f"no assistant tokens left to learn within --max_seq_length {max_seq_length} "
                                    "(template mismatch, or truncation cut off the reply); shorten the conversation "
                                    "or raise --max_seq_length"))
    if problems:
        raise DataError(problems)
