"""Two CPU speedups the series measured (`python -m utils bench --sweep`): eager attention, and an LM head that
scores only the positions that carry loss."""
import contextlib


def fast_attention(model, profile):
    """Eager attention on a CPU: for persona-length sequences it beats sdpa there (`python -m utils bench --sweep`).
    GPUs keep sdpa."""
    if profile.device == "cpu":
        model.set_attn_implementation("eager")
    return model


def lm_head_hook_present() -> bool:
    import trl.trainer.utils as trl_utils

    return callable(getattr(trl_utils, "_use_triton", None))


@contextlib.contextmanager
def lm_head_positions(which: str = "trained"):
    """Which positions trl's fused LM head scores: the "trained" ones only, or "every" one (masked ones give 0).

    trl scores only the trained positions on Triton GPUs and every position elsewhere, to keep shapes fixed for
    compilers. A CPU compiles nothing, and each masked position (system prompt, user turns: most of a persona
    conversation) costs a vocabulary-sized matmul for nothing. trl asks its private `_use_triton` for this choice in
    trl.trainer.utils alone (its kernels import their own copy), so only that name is swapped, only inside this
    block. tests/test_bench.py counts the positions scored, so a trl that stops asking fails there.
    """
    import trl.trainer.utils as trl_utils

    if not lm_head_hook_present():
        print("note: this trl decides which positions its LM head scores without _use_triton; keeping its choice")
        yield
        return
    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: which == "trained"
    try:
        yield
    finally:
        trl_utils._use_triton = original
