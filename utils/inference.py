"""Talk to a persona: load the base once, attach adapters by name, generate (batched or streamed)."""
import contextlib
import threading
from pathlib import Path

import torch
from transformers import DynamicCache, TextIteratorStreamer

from .errors import FlagError

BASE = "base"


def attach_adapters(model, adapters: dict[str, Path]):
    """Load each adapter onto one base model under its persona name; returns the PeftModel."""
    from peft import PeftModel

    for name, path in adapters.items():
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
    model.eval()
    return model


@contextlib.contextmanager
def persona(model, name: str):
    """Run the model as `name`: a loaded adapter, or "base" for the base model with every adapter off."""
    if name == BASE or not hasattr(model, "disable_adapter"):
        with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
            yield model
        return
    model.set_adapter(name)
    yield model


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}] + messages


SAMPLING_RANGES = {  # flag: (test, what is allowed)
    "max_new_tokens": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "temperature": (lambda v: v >= 0, "a number >= 0 (0: greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "repetition_penalty": (lambda v: v > 0, "a number > 0 (1: off)"),
    "no_repeat_ngram_size": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (0: off)"),
}


def check_sampling(**sampling):
    for name, value in sampling.items():
        allowed, description = SAMPLING_RANGES[name]
        if not allowed(value):
            raise FlagError(f"--{name} {value!r} is out of range: use {description}")


def sampling_kwargs(temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                    max_new_tokens: int = 200, no_repeat_ngram_size: int = 0) -> dict:
    check_sampling(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty,
                   max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size)
    kwargs = {"max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty,
              "no_repeat_ngram_size": no_repeat_ngram_size}
    if temperature > 0:
        return kwargs | {"do_sample": True, "temperature": temperature, "top_p": top_p}
    return kwargs | {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def prompt_texts(tokenizer, conversations) -> list[str]:
    """Each conversation as the chat template writes it, ending where the assistant's reply begins."""
    return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]


def _inputs(tokenizer, conversations, device):
    texts = prompt_texts(tokenizer, conversations)
    # Left padding: generation continues from the right end of every row (the tokenizer's own setting is kept).
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                     add_special_tokens=False).to(device)


def shared_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens all rows share, leaving every row at least one token of its own."""
    n = min(map(len, rows)) - 1
    return next((i for i in range(n) if len({row[i] for row in rows}) > 1), n)


def prefix_cache(model, prefix: list[int], copies: int):
    """The keys and values of a prompt prefix every row shares: computed once, then copied for each row."""
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([prefix], device=model.device), past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(copies)
    return cache


def _shared_prefix_inputs(tokenizer, rows: list[list[int]], n: int, device) -> dict:
    """Each row as [shared prefix | padding | its own tokens]: the attention mask skips the padding, and the position
    ids that generate derives from the mask are the ones plain left padding gives."""
    width = max(map(len, rows)) - n
    ids, mask = [], []
    for row in rows:
        pads = width - (len(row) - n)
        ids.append(row[:n] + [tokenizer.pad_token_id] * pads + row[n:])
        mask.append([1] * n + [0] * pads + [1] * (len(row) - n))
    return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}


@torch.inference_mode()
def generate_token_ids(model, tokenizer, conversations: list[list[dict]], **sampling) -> list[list[int]]:
    """New token ids for each conversation (batched), ending at the end-of-turn token when it stopped.

    The prompt prefix the rows share (a system prompt, few-shot examples) is run once per batch, not once per row,
    and its keys and values are copied to every row: the same tokens come out, with less prefill work."""
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompt_texts(tokenizer, conversations)]
    n = shared_prefix_length(rows)
    inputs = _shared_prefix_inputs(tokenizer, rows, n, model.device)
    cache = prefix_cache(model, rows[0][:n], len(rows)) if n else None
    output = model.generate(**inputs, past_key_values=cache, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, **sampling_kwargs(**sampling))
    new = output[:, inputs["input_ids"].shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in new]


def generate_replies(model, tokenizer, conversations: list[list[dict]], batch_size: int = 8, **sampling) -> list[str]:
    replies = []
    for start in range(0, len(conversations), batch_size):
        ids = generate_token_ids(model, tokenizer, conversations[start:start + batch_size], **sampling)
        replies += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
    return replies


def reply(model, tokenizer, messages: list[dict], **sampling) -> str:
    return generate_replies(model, tokenizer, [messages], **sampling)[0]


def stream_reply(model, tokenizer, messages: list[dict], **sampling):
    """Yield the reply's text piece by piece while generation runs in a background thread.

    If `generate` raises there, the stream ends and the same exception is raised here, instead of a wait forever.
    """
    kwargs = sampling_kwargs(**sampling)  # bad settings fail here, before a thread starts
    inputs = _inputs(tokenizer, [messages], model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failed = []

    def generate():
        try:
            with torch.inference_mode():
                model.generate(**inputs, streamer=streamer, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id, **kwargs)
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread below
            failed.append(error)
            streamer.end()

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    yield from streamer
    worker.join()
    if failed:
        raise failed[0]
