"""How likely a model finds a text: held-out NLL of the assistant's tokens, KL from the base, plain-text perplexity.

The tokens scored are the ones training learns from: the library's assistant mask (utils/masking.py).
"""
import contextlib
import math

import torch

from .hardware import CPU_BF16_WORTH_IT, cpu_bf16_speedup
from .inference import BASE, persona
from .masking import assistant_mask, training_chat_template


def _right_padded(rows: list[tuple[list[int], list[int]]], pad_token_id: int):
    """(token ids, scored mask) rows -> right-padded input_ids, attention_mask and scored mask tensors.

    Scoring pads on the right (unlike generation): every row then starts at position 0, as in training.
    """
    width = max(len(ids) for ids, _ in rows)
    fill = lambda row, value: row + [value] * (width - len(row))  # noqa: E731
    return (torch.tensor([fill(ids, pad_token_id) for ids, _ in rows]),
            torch.tensor([fill([1] * len(ids), 0) for ids, _ in rows]),
            torch.tensor([fill(mask, 0) for _, mask in rows]).bool())


def conversation_batches(tokenizer, conversations: list[list[dict]], batch_size: int = 8):
    template = training_chat_template(tokenizer)
    for start in range(0, len(conversations), batch_size):
        encoded = [assistant_mask(tokenizer, c, template) for c in conversations[start:start + batch_size]]
        yield _right_padded([(e["input_ids"], e["assistant_masks"]) for e in encoded], tokenizer.pad_token_id)


def scoring_autocast(model):
    """bf16 matmuls over fp32 weights on a CPU where they are faster. A mean over many tokens' log-probabilities
    barely moves (tests/test_evaluate.py), unlike greedy generation, where one rounding can change the next token."""
    on_fp32_cpu = model.device.type == "cpu" and next(model.parameters()).dtype == torch.float32
    if on_fp32_cpu and cpu_bf16_speedup() > CPU_BF16_WORTH_IT:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def scoring_dtype(model) -> str:
    """What the scoring matmuls run in, for reports: "bfloat16 autocast" or the weights' own dtype."""
    if isinstance(scoring_autocast(model), torch.autocast):
        return "bfloat16 autocast"
    return str(next(model.parameters()).dtype).removeprefix("torch.")


@torch.inference_mode()
def log_probs_at(model, ids, attention, scored):
    """Next-token log-probabilities at the positions that predict a scored token, and those tokens: [n, vocab], [n]."""
    with scoring_autocast(model):
        logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits[:, :-1]
    predicts_scored = scored[:, 1:].to(model.device)  # position t predicts token t + 1
    return torch.log_softmax(logits[predicts_scored].float(), dim=-1), ids[:, 1:].to(model.device)[predicts_scored]


def mean_nll(model, batches) -> float:
    total, count = 0.0, 0
    for batch in batches:
        log_probs, targets = log_probs_at(model, *batch)
        total -= log_probs.gather(1, targets[:, None]).sum().item()
        count += len(targets)
    return total / count


def assistant_nll(model, tokenizer, conversations: list[list[dict]], name: str, batch_size: int = 8) -> float:
    """Mean negative log-likelihood (nats per token) of the assistant's tokens: the training loss, on held-out data."""
    with persona(model, name):
        return mean_nll(model, conversation_batches(tokenizer, conversations, batch_size))


def mean_kl_from_base(model, tokenizer, conversations: list[list[dict]], name: str, batch_size: int = 8) -> float:
    """Mean token-level KL(base || adapter) of the next-token distributions over the assistant's tokens.

    0 means the adapter left these answers untouched; it grows as the adapter pulls the model away from the base.
    """
    total, count = 0.0, 0
    for batch in conversation_batches(tokenizer, conversations, batch_size):
        with persona(model, BASE):
            base, _ = log_probs_at(model, *batch)
        with persona(model, name):
            adapted, _ = log_probs_at(model, *batch)
        total += (base.exp() * (base - adapted)).sum().item()
        count += len(base)
    return total / count


def perplexity(model, tokenizer, text: str, name: str, window: int = 256, batch_size: int = 4) -> float:
    """Perplexity of plain text (no chat template), scored in non-overlapping windows of `window` tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = [(ids[i:i + window], [1] * len(ids[i:i + window])) for i in range(0, len(ids), window)]
    batches = (_right_padded(windows[i:i + batch_size], tokenizer.pad_token_id)
               for i in range(0, len(windows), batch_size))
    with persona(model, name):
        return math.exp(mean_nll(model, batches))
