"""The speed benchmark runs end to end and notebook 07 runs headless, small. They assert what ran, never a speed."""
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, outputs_text
from run_series import run_notebook
from utils.measure import flops_per_token, matmul_params, model_flops_utilisation

SUMMARY = re.compile(r"^speedup=(\d+\.\d+) real_tok_s=(\d+) mfu=(\d+\.\d+)$", re.MULTILINE)


def test_mfu_counts_4n_per_real_token_and_6n_with_checkpointing():
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5, bias=False))
    n = matmul_params(model)
    assert n == 10 * 20 + 20 * 5
    assert flops_per_token(n, checkpointing=False) == 4 * n and flops_per_token(n, checkpointing=True) == 6 * n
    assert model_flops_utilisation(1000, 4 * n, peak_tflops=4 * n * 2000 / 1e12) == pytest.approx(0.5)


def test_bench_quick_prints_a_table_and_the_summary_line():
    # Shared CI cores: idle OpenMP threads sleep instead of spinning (see notebook 07), or the run crawls.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    done = subprocess.run([sys.executable, "-m", "utils", "bench", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)  # a guard against a hang, not a speed check
    assert done.returncode == 0, done.stderr[-3000:]
    assert "seed-style" in done.stdout and "ours" in done.stdout and "peaks (TFLOP/s" in done.stdout
    speedup, tokens_per_second, mfu = SUMMARY.search(done.stdout).groups()
    assert float(speedup) > 0 and int(tokens_per_second) > 0 and 0 < float(mfu) < 1.5


def test_notebook_07_runs_small(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))  # the kernel inherits it
    params = {"FIGURES_DIR": str(tmp_path), "BATCH_SIZE": 1, "STEPS": 2, "SETTINGS": ["ours"]}
    executed = run_notebook(ROOT / "notebooks" / "07_speed_memory_scaling.ipynb", params, out_dir=tmp_path,
                            solved=True)
    for figure in ("07_time_breakdown.png", "07_memory.png", "07_settings.png"):
        assert (tmp_path / figure).stat().st_size > 10_000, figure
    text = outputs_text(executed)
    assert "forward" in text and "aten::" in text, "the step is timed and profiled"
    assert "correct: ours ran at MFU" in text, "the exercise's solution passes its check"
    assert "T4 estimate" in text and "global batch" in text


def test_scoring_only_the_trained_positions_gives_the_same_loss_on_fewer_positions(monkeypatch):
    """lm_head_positions swaps a private trl hook: count the positions trl's LM head scores, so that a trl which
    stops asking the hook fails here (the loss alone would pass either way)."""
    import trl.trainer.utils as trl_utils

    from utils.bench import OURS, bench_trainer
    from utils.fastpath import lm_head_positions
    from utils.hardware import detect_hardware
    from utils.models import load_tokenizer

    trainer, _ = bench_trainer(OURS, detect_hardware(), load_tokenizer("embedded"), "embedded", steps=1,
                               batch_size=4, out_dir=str(ROOT / "build" / "test_lm_head"))
    assert trainer.model.config._attn_implementation == "eager", "utils.fastpath.fast_attention: eager on a CPU"
    batch = next(iter(trainer.get_train_dataloader()))
    scored = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *rest: scored.append(hidden.shape[0]) or apply(hidden, *rest))
    losses = {}
    for which in ("every", "trained"):
        with torch.no_grad(), trainer.accelerator.autocast(), lm_head_positions(which):
            losses[which] = trainer.compute_loss(trainer.model, batch).item()
    assert losses["trained"] == pytest.approx(losses["every"], rel=1e-3)
    shifted = batch["labels"][:, 1:]  # position t predicts token t + 1
    trained = int((shifted != -100).sum())
    assert scored == [shifted.numel(), trained] and trained < scored[0] / 2


def test_the_benchmark_trains_exactly_as_training_does():
    """`bench`'s "ours" row and `train_persona` build their trainers in one place: same settings, same dtypes."""
    from utils.bench import OURS, bench_config, bench_trainer
    from utils.hardware import detect_hardware
    from utils.models import load_tokenizer
    from utils.training import build_trainer

    profile, tokenizer, out = detect_hardware(), load_tokenizer("embedded"), str(ROOT / "build" / "test_parity")
    ours, _ = bench_trainer(OURS, profile, tokenizer, "embedded", steps=2, batch_size=8, out_dir=out)
    training = build_trainer(bench_config(OURS, "embedded", 2, 8, out), profile, tokenizer)
    differ = {k for k, v in training.args.to_dict().items()
              if ours.args.to_dict()[k] != v and k not in ("disable_tqdm", "logging_strategy")}
    assert not differ, differ
    dtypes = lambda trainer: sorted({(p.requires_grad, str(p.dtype)) for p in trainer.model.parameters()})  # noqa: E731
    assert dtypes(ours) == dtypes(training)
    assert ("False", "torch.bfloat16") in [(str(g), d) for g, d in dtypes(ours)] or not profile.bf16, \
        "the frozen base is stored in the compute dtype"
