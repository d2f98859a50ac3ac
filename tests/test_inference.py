"""Generation: batched left-padded replies equal one-at-a-time replies, a shared prompt prefix computed once gives
what transformers' own left-padded generate gives, the shared tokenizer is left as it was, and
an error inside streaming reaches the caller instead of hanging it."""
import threading

import pytest

from utils.errors import FlagError
from utils.inference import _inputs, generate_token_ids, shared_prefix_length, stream_reply
from utils.models import load_base_model

PROMPTS = ["Hi!", "What is the capital of France, and why is it the capital?", "Name a colour."]


@pytest.fixture(scope="module")
def model():
    return load_base_model()


def test_a_batch_replies_like_one_prompt_at_a_time(model, tokenizer):
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    side = tokenizer.padding_side
    batched = generate_token_ids(model, tokenizer, conversations, max_new_tokens=12)
    alone = [generate_token_ids(model, tokenizer, [c], max_new_tokens=12)[0] for c in conversations]
    assert batched == alone
    assert tokenizer.padding_side == side, "generation pads on the left without changing the shared tokenizer"


def test_a_shared_prefix_computed_once_gives_the_tokens_plain_left_padding_gives(model, tokenizer):
    examples = [{"role": "system", "content": "You are a terse assistant who answers in one sentence."},
                {"role": "user", "content": "What is a list?"}, {"role": "assistant", "content": "An ordered sequence."}]
    conversations = [examples + [{"role": "user", "content": p}] for p in PROMPTS]
    rows = [tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"]
            for c in conversations]
    assert shared_prefix_length(rows) > 30, "the system prompt and the example are one prefix"
    assert shared_prefix_length([[1, 2, 3], [1, 2]]) == 1, "every row keeps a token of its own"

    inputs = _inputs(tokenizer, conversations, model.device)
    plain = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id)[:, inputs["input_ids"].shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    plain = [row[: row.index(eos) + 1] if eos in row else row for row in plain]
    assert generate_token_ids(model, tokenizer, conversations, max_new_tokens=12) == plain


def test_an_error_inside_streaming_is_raised_not_waited_for(model, tokenizer, monkeypatch):
    def broken_generate(**kwargs):
        raise RuntimeError("the GPU fell over")

    monkeypatch.setattr(model, "generate", broken_generate)
    outcome = {}

    def consume():
        try:
            list(stream_reply(model, tokenizer, [{"role": "user", "content": "Hi"}], max_new_tokens=5))
        except RuntimeError as error:
            outcome["error"] = str(error)

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "stream_reply hung after generate raised"
    assert outcome == {"error": "the GPU fell over"}


def test_bad_sampling_settings_fail_before_a_thread_starts(model, tokenizer):
    with pytest.raises(FlagError, match="--max_new_tokens"):
        next(stream_reply(model, tokenizer, [{"role": "user", "content": "Hi"}], max_new_tokens=0))
