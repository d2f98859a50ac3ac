"""The speed benchmark runs end to end and notebook 07 runs headless, small. They assert what ran, never a speed."""
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, outputs_text
from run_series import run_notebook
from utils.bench import flops_per_token, matmul_params, model_flops_utilisation

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
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "seed-style" in done.stdout and "ours" in done.stdout and "peaks (TFLOP/s" in done.stdout
    speedup, tokens_per_second, mfu = SUMMARY.search(done.stdout).groups()
    assert float(speedup) > 0 and int(tokens_per_second) > 0 and 0 < float(mfu) < 1.5


def test_notebook_07_runs_small(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))  # the kernel inherits it
    params = {"FIGURES_DIR": str(tmp_path), "BATCH_SIZE": 1, "STEPS": 2, "SETTINGS": ["ours"]}
    executed = run_notebook(ROOT / "notebooks" / "07_speed_memory_scaling.ipynb", params, out_dir=tmp_path)
    for figure in ("07_time_breakdown.png", "07_memory.png", "07_settings.png"):
        assert (tmp_path / figure).stat().st_size > 10_000, figure
    text = outputs_text(executed)
    assert "forward" in text and "aten::" in text, "the step is timed and profiled"
    assert "not solved yet" in text, "the exercise check runs (unsolved) without failing"
    assert "T4 estimate" in text and "global batch" in text


def test_scoring_only_the_trained_positions_gives_the_same_loss():
    from utils.bench import OURS, build_trainer, persona_rows
    from utils.data import training_chat_template
    from utils.hardware import detect_hardware
    from utils.models import load_tokenizer
    from utils.training import lm_head_positions

    tokenizer = load_tokenizer("embedded")
    tokenizer.chat_template = training_chat_template(tokenizer)
    trainer, _ = build_trainer(OURS, detect_hardware(), tokenizer, persona_rows()[:8], "embedded", steps=1,
                               batch_size=4, out_dir=str(ROOT / "build" / "test_lm_head"))
    assert trainer.model.config._attn_implementation == "eager", "utils.training.fast_attention: eager on a CPU"
    batch = next(iter(trainer.get_train_dataloader()))
    losses = {}
    for which in ("every", "trained"):
        with torch.no_grad(), trainer.accelerator.autocast(), lm_head_positions(which):
            losses[which] = trainer.compute_loss(trainer.model, batch).item()
    assert losses["trained"] == pytest.approx(losses["every"], rel=1e-3)
