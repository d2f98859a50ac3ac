"""A training progress line on the terminal, for notebooks run headless (`make run`): their own output is
captured into the executed notebook, so without it a long training cell would be minutes of silence."""
import os
import sys


def progress_line(label: str, step: int, max_steps: int, logs: dict) -> str | None:
    """ "   training zen_coder: step 20/60, loss 2.410" for every 10th step and each evaluation, else None."""
    if "eval_loss" in logs:
        return f"   training {label}: step {step}/{max_steps}, eval loss {logs['eval_loss']:.3f}"
    if "loss" in logs and (step % 10 == 0 or step == max_steps):
        return f"   training {label}: step {step}/{max_steps}, loss {logs['loss']:.3f}"
    return None


def progress_callbacks(label: str) -> list:
    """A callback writing progress lines to the process' real stderr when PERSONA_LORA_PROGRESS is set
    (scripts/run_series.py sets it for the kernels it starts), else none."""
    if not os.environ.get("PERSONA_LORA_PROGRESS"):
        return []
    from transformers import TrainerCallback

    class TerminalProgress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            line = progress_line(label, state.global_step, state.max_steps, logs or {})
            if line:
                sys.__stderr__.write(line + "\n")
                sys.__stderr__.flush()

    return [TerminalProgress()]
