"""How fast does LoRA training run here, and why? Seed-style vs the series' path, and one change at a time.

Every run builds its trainer with `utils.training.build_trainer`, the one training itself uses, from the same
persona data and split; a setting changes only what it names. Only real (non-padding) tokens count; MFU and the
FLOP count are explained in utils/measure.py.
"""
import dataclasses
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .fastpath import lm_head_positions
from .data import DATA_DIR
from .measure import (PeakMemory, counting_collator, flops_per_token, matmul_params, measure_peaks,
                      model_flops_utilisation, release_freed_memory, step_timer)
from .training import TrainConfig, build_trainer

PERSONA_FILE = DATA_DIR / "zen_coder.jsonl"
SEED_MAX_LENGTH = 512  # what typical tutorials pad every sequence to


@dataclass(frozen=True)
class Setting:
    """One way to train: the series' default path with these changes, and nothing else."""
    label: str
    precision: str | None = None  # None: the series' choice for this machine (utils.hardware); "fp32", "fp16", "bf16"
    train: dict = field(default_factory=dict)  # TrainConfig changes: batch size, lora_dropout, 4-bit, checkpointing
    args: dict = field(default_factory=dict)   # SFTConfig changes: padding, loss masking, sampling order, ...
    attention: str | None = None               # "eager" or "sdpa"; None: the series' choice (utils.fastpath)
    lm_head: str = "trained"                   # trl's fused LM head scores "trained" positions only, or "every" one
    threads: int | None = None                 # torch.set_num_threads; None: as it is
    micro_batch: int | None = None             # smaller forward/backward batches, accumulated to the same batch


OURS = Setting("ours")
# fp32 sequences of 512 tokens take ~2.5 GB each to train here: micro-batches of 2 with gradient accumulation, as
# those tutorials do too (a batch of 8 at once was killed for lack of memory on a 24 GB machine).
SEED_STYLE = Setting("seed-style", precision="fp32", micro_batch=2, attention="sdpa", lm_head="every",
                     train={"lora_dropout": 0.05, "full_sequence_loss": True, "max_seq_length": SEED_MAX_LENGTH},
                     args={"pad_to_multiple_of": SEED_MAX_LENGTH, "train_sampling_strategy": "random"})
# One change at a time from ours: what each setting is worth (notebook 07 plots these).
SWEEP = [
    Setting("fp32 (no bf16)", precision="fp32"),
    Setting("pad every sequence to 512", train={"max_seq_length": SEED_MAX_LENGTH},
            args={"pad_to_multiple_of": SEED_MAX_LENGTH}, micro_batch=2),
    Setting("random order (no length groups)", args={"train_sampling_strategy": "random"}),
    Setting("full-sequence loss", train={"full_sequence_loss": True}),
    Setting("lora_dropout 0.05", train={"lora_dropout": 0.05}),
    Setting("activation checkpointing", train={"gradient_checkpointing": True}),
    Setting("4-bit NF4 base", train={"use_quantization": True}),
    Setting("batch 4", train={"per_device_train_batch_size": 4}),
    Setting("padding-free batches", args={"padding_free": True, "max_length": None}),
    Setting("sdpa attention (not eager)", attention="sdpa"),
    Setting("LM head on every position", lm_head="every"),
    Setting("1 thread", threads=1),
]


def comparison(use_quantization: bool = False, precision: str | None = None, sweep: bool = False) -> list[Setting]:
    """Seed-style, ours (in `precision`) and, with `sweep`, the SWEEP; all on a 4-bit base if `use_quantization`."""
    settings = [SEED_STYLE, dataclasses.replace(OURS, precision=precision), *(SWEEP if sweep else [])]
    if use_quantization:
        settings = [dataclasses.replace(s, train={"use_quantization": True, **s.train}) for s in settings]
    return settings


@dataclass
class Result:
    label: str
    precision: str
    batch: str  # "8", or "2x4": micro-batches of 2, 4 of them per optimizer step
    step_seconds: list[float]
    real_tokens: int
    padded_tokens: int
    real_tokens_per_second: float
    flops_per_token: float
    mfu: float
    peak_memory_mb: float


def bench_config(setting: Setting, model_id: str, steps: int, batch_size: int, out_dir: str,
                 dataset_path=PERSONA_FILE) -> TrainConfig:
    """The TrainConfig a setting trains with: the series' defaults, the setting's changes, no eval split."""
    micro_batch = min(setting.micro_batch or batch_size, batch_size)
    changes = {"per_device_train_batch_size": micro_batch, "gradient_accumulation_steps": batch_size // micro_batch,
               "precision": setting.precision or "auto", **setting.train}
    return TrainConfig(dataset_path=str(dataset_path), persona_name=Path(dataset_path).stem, model_id=model_id,
                       output_dir=out_dir,
                       max_steps=steps, eval_fraction=0.0, save_steps=10**9, **changes)


def bench_trainer(setting: Setting, profile, tokenizer, model_id: str, steps: int, batch_size: int, out_dir: str):
    """The trainer of one setting (utils.training.build_trainer, quiet) and its model FLOPs per token."""
    from transformers import PrinterCallback

    config = bench_config(setting, model_id, steps, batch_size, out_dir)
    trainer = build_trainer(config, profile, tokenizer,
                            sft_overrides={"disable_tqdm": True, "logging_strategy": "no", **setting.args})
    if setting.attention:
        trainer.model.set_attn_implementation(setting.attention)
    trainer.remove_callback(PrinterCallback)
    return trainer, flops_per_token(matmul_params(trainer.model), config.gradient_checkpointing)


def run_setting(setting: Setting, profile, tokenizer, peaks: dict, model_id: str = "embedded", steps: int = 5,
                batch_size: int = 8) -> Result:
    """Train `steps` optimizer steps; measure real tokens/s (after a first warm-up step if 3+), MFU and memory."""
    threads = torch.get_num_threads()
    torch.set_num_threads(setting.threads or threads)
    real, padded = [], []
    try:
        with tempfile.TemporaryDirectory() as out_dir:
            trainer, flops = bench_trainer(setting, profile, tokenizer, model_id, steps, batch_size, out_dir)
            precision = "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32"
            trainer.data_collator = counting_collator(trainer.data_collator, real, padded)
            timer = step_timer(profile.device)
            trainer.add_callback(timer)
            with PeakMemory(profile.device) as memory, lm_head_positions(setting.lm_head):
                trainer.train()
            micro_batch, accumulation = (trainer.args.per_device_train_batch_size,
                                         trainer.args.gradient_accumulation_steps)
            del trainer
    finally:
        torch.set_num_threads(threads)
        release_freed_memory()
    step_tokens = [sum(real[i:i + accumulation]) for i in range(0, len(real), accumulation)]
    timed = slice(1, None) if len(timer.seconds) > 2 else slice(None)
    tokens_per_second = sum(step_tokens[timed]) / sum(timer.seconds[timed])
    batch = f"{micro_batch}x{accumulation}" if accumulation > 1 else str(micro_batch)
    return Result(setting.label, precision, batch, timer.seconds, sum(real), sum(padded), tokens_per_second, flops,
                  model_flops_utilisation(tokens_per_second, flops, peaks[precision]), memory.peak_bytes / 2**20)


def run_comparison(settings: list[Setting], profile, model_config: str = "embedded", steps: int = 4,
                   batch_size: int = 8, progress=None) -> tuple[list[Result], dict]:
    """Every setting in turn, then MFU against the best matmul peaks measured before and after (other jobs on a
    machine come and go). Returns the results and those peaks."""
    from .models import load_tokenizer
    from .random_models import random_checkpoint

    quiet_libraries()
    model_id = "embedded" if model_config == "embedded" else str(random_checkpoint(model_config))
    tokenizer = load_tokenizer("embedded")  # the data is tokenized the same way for every architecture
    peaks = measure_peaks(profile.device)
    results = []
    for setting in settings:
        if progress:
            progress(setting.label)
        results.append(run_setting(setting, profile, tokenizer, peaks, model_id, steps, batch_size))
    peaks = measure_peaks(profile.device, earlier=peaks)
    for result in results:
        result.mfu = model_flops_utilisation(result.real_tokens_per_second, result.flops_per_token,
                                             peaks[result.precision])
    return results, peaks


def format_table(results: list[Result], peaks: dict, device: str) -> str:
    memory = "peak RSS" if device == "cpu" else "peak alloc"
    header = (f"{'run':<32} {'prec':>4} {'batch':>5} {'steps':>5} {'real tok':>8} {'padding':>7} {'s/step':>7} "
              f"{'real tok/s':>10} {'MFU (of peak)':>14} {memory:>10}")
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.label:<32} {r.precision:>4} {r.batch:>5} {len(r.step_seconds):>5} {r.real_tokens:>8} "
                     f"{1 - r.real_tokens / r.padded_tokens:>7.0%} {statistics.median(r.step_seconds):>7.2f} "
                     f"{r.real_tokens_per_second:>10.0f} {r.mfu:>6.1%} ({r.precision:>4}) {r.peak_memory_mb:>7.0f} MB")
    lines.append("peaks (TFLOP/s, large square matmuls, this run): "
                 + ", ".join(f"{name} {tflops:.3f}" for name, tflops in peaks.items()))
    return "\n".join(lines)


def summary_line(ours: Result, seed: Result) -> str:
    speedup = ours.real_tokens_per_second / seed.real_tokens_per_second
    return f"speedup={speedup:.2f} real_tok_s={ours.real_tokens_per_second:.0f} mfu={ours.mfu:.3f}"


def quiet_libraries():
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
