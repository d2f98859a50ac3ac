"""`python -m utils bench`: how fast does LoRA training run here, and why? Seed-style vs the series' default path.

Both runs train the same persona data for the same number of optimizer steps and examples. Only real (non-padding)
tokens count. Model-FLOPs utilisation (MFU) is the useful matmul work done per second over this machine's matmul
peak, measured in the same run: with a frozen base and LoRA, a token costs 4·N FLOPs (forward 2·N, backward through
the frozen weights 2·N, no weight gradients), ×1.5 with activation checkpointing (the forward runs twice). N counts
the weights of every linear layer, the LM head included; attention scores and LoRA's small matmuls are left out.
"""
import dataclasses
import gc
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .training import TrainConfig, lm_head_positions

PERSONA_FILE = Path(__file__).resolve().parents[1] / "persona_data" / "zen_coder.jsonl"
MAX_LENGTH = TrainConfig.max_seq_length

# Architectures rebuilt from their configs with random weights (speed does not depend on the weights): no download.
# Vocabularies are at least the embedded tokenizer's 49,152 ids, which the benchmark's data is tokenized with.
ARCHITECTURES = {
    "smollm2-360m": dict(model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True),
    "smollm2-1.7b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "phi-3-mini": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=49152,  # real: 32,064
                       tie_word_embeddings=False),
}


@dataclass(frozen=True)
class Setting:
    """One way to train: the series' default path with these changes, and nothing else."""
    label: str
    precision: str | None = None  # None: the series' choice for this machine (utils.hardware); "fp32", "fp16", "bf16"
    train: dict = field(default_factory=dict)  # TrainConfig changes: batch size, lora_dropout, 4-bit, checkpointing
    args: dict = field(default_factory=dict)   # SFTConfig changes: padding, loss masking, sampling order, ...
    attention: str | None = None               # "eager" or "sdpa"; None: the series' choice (utils.training)
    lm_head: str = "trained"                   # trl's fused LM head scores "trained" positions only, or "every" one
    threads: int | None = None                 # torch.set_num_threads; None: as it is
    micro_batch: int | None = None             # smaller forward/backward batches, accumulated to the same batch


OURS = Setting("ours")
# fp32 sequences of 512 tokens take ~2.5 GB each to train here: micro-batches of 2 with gradient accumulation, as
# those tutorials do too (a batch of 8 at once was killed for lack of memory on a 24 GB machine).
SEED_STYLE = Setting("seed-style", precision="fp32", train={"lora_dropout": 0.05}, micro_batch=2, attention="sdpa",
                     lm_head="every",
                     args={"pad_to_multiple_of": MAX_LENGTH, "assistant_only_loss": False,
                           "train_sampling_strategy": "random"})
# One change at a time from ours: what each setting is worth (notebook 07 plots these).
SWEEP = [
    Setting("fp32 (no bf16)", precision="fp32"),
    Setting("pad every sequence to 512", args={"pad_to_multiple_of": MAX_LENGTH}, micro_batch=2),
    Setting("random order (no length groups)", args={"train_sampling_strategy": "random"}),
    Setting("full-sequence loss", args={"assistant_only_loss": False}),
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


# --- the machine's peak --------------------------------------------------------------------------------------------

def synchronize(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak_tflops(device: str, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """The best of `repeats` large square matmuls: the most this machine's matmul units deliver in `dtype`."""
    n = n or (8192 if device == "cuda" else 2048)
    per_timing = 20 if device == "cuda" else 1
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        synchronize(device)
        start = time.perf_counter()
        for _ in range(per_timing):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / per_timing)
    return 2 * n**3 / best / 1e12


def measure_peaks(device: str, earlier: dict | None = None) -> dict[str, float]:
    """Matmul peak (TFLOP/s) per precision (fp16 only on CUDA); with `earlier` peaks, the best of both."""
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32} | ({"fp16": torch.float16} if device == "cuda" else {})
    peaks = {name: matmul_peak_tflops(device, dtype) for name, dtype in dtypes.items()}
    return {name: max(peak, (earlier or {}).get(name, 0)) for name, peak in peaks.items()}


# --- what is measured ----------------------------------------------------------------------------------------------

def matmul_params(model) -> int:
    """Weights that take part in a matmul for every token: every linear layer, LM head included (4-bit ones too)."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(n_matmul_params: int, checkpointing: bool) -> float:
    return 4 * n_matmul_params * (1.5 if checkpointing else 1.0)


def model_flops_utilisation(real_tokens_per_second: float, flops_per_real_token: float, peak_tflops: float) -> float:
    return real_tokens_per_second * flops_per_real_token / (peak_tflops * 1e12)


class PeakMemory:
    """Peak memory while the block runs: the process' RSS on CPU (sampled every 20 ms), allocated memory on CUDA."""

    def __init__(self, device: str):
        self.device, self.peak_bytes = device, 0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        process, self._done = psutil.Process(), threading.Event()

        def sample():
            while not self._done.wait(0.02):
                self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._done.set()
            self._sampler.join()


def release_freed_memory():
    """Collect garbage and hand freed heap back to the OS (glibc keeps it otherwise), so the next RSS peak is honest."""
    import ctypes
    import ctypes.util

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = ctypes.util.find_library("c")
    if libc and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)


def step_timer(device: str):
    """A trainer callback that records how long each optimizer step took."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self.seconds, self.last = [], time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            now = time.perf_counter()
            self.seconds.append(now - self.last)
            self.last = now

    return StepTimer()


def counting_collator(collator, real: list, padded: list):
    """Wrap the trainer's collator to count, per batch, the real tokens and the tokens the model processes."""
    def collate(features):
        batch = collator(features)
        real.append(sum(len(f["input_ids"]) for f in features))
        padded.append(batch["input_ids"].numel())
        return batch
    return collate


# --- the runs ------------------------------------------------------------------------------------------------------

def random_checkpoint(name: str) -> Path:
    """A randomly initialised model of a known architecture, saved once so it loads like any checkpoint (4-bit too)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import CACHE_DIR

    target = CACHE_DIR / "random" / name
    if not (target / "config.json").exists():
        spec = dict(ARCHITECTURES[name])
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(target)
    return target


def with_precision(profile, precision: str | None):
    if precision is None:
        return profile
    return dataclasses.replace(profile, name=f"{profile.device}-{precision}", bf16=precision == "bf16",
                               fp16=precision == "fp16")


def persona_rows(path=PERSONA_FILE) -> list[dict]:
    """The persona's training split, exactly as utils.training.train_persona makes it."""
    from .data import load_conversations
    from .training import split_train_eval

    train, _ = split_train_eval(load_conversations(path), TrainConfig.eval_fraction, TrainConfig.seed)
    return [{"messages": c["messages"]} for c in train]


def build_trainer(setting: Setting, profile, tokenizer, rows, model_config: str, steps: int, batch_size: int,
                  out_dir: str):
    """An SFTTrainer built the way utils.training builds it, with the setting's changes on top."""
    from datasets import Dataset
    from peft import prepare_model_for_kbit_training
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from .models import load_base_model
    from .training import fast_attention, lora_config, sft_config

    micro_batch = min(setting.micro_batch or batch_size, batch_size)
    config = TrainConfig(**{"dataset_path": "", "persona_name": "bench", "model_id": model_config,
                            "output_dir": out_dir, "per_device_train_batch_size": micro_batch,
                            "gradient_accumulation_steps": batch_size // micro_batch, "max_steps": steps,
                            "save_steps": 10**9, **setting.train})
    model_path = model_config if model_config == "embedded" else str(random_checkpoint(model_config))
    model = load_base_model(model_path, profile, quantize=config.use_quantization)
    if config.use_quantization:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    fast_attention(model, profile)
    if setting.attention:
        model.set_attn_implementation(setting.attention)
    n_matmul = matmul_params(model)
    args = dataclasses.replace(sft_config(config, profile, has_eval=False), disable_tqdm=True,
                               logging_strategy="no", **setting.args)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora_config(config))
    trainer.remove_callback(PrinterCallback)
    return trainer, flops_per_token(n_matmul, config.gradient_checkpointing)


def run_setting(setting: Setting, profile, tokenizer, rows, peaks: dict, model_config: str = "embedded",
                steps: int = 5, batch_size: int = 8) -> Result:
    """Train `steps` optimizer steps; measure real tokens/s (after a first warm-up step if 3+), MFU and memory."""
    profile = with_precision(profile, setting.precision)
    threads = torch.get_num_threads()
    torch.set_num_threads(setting.threads or threads)
    real, padded = [], []
    try:
        with tempfile.TemporaryDirectory() as out_dir:
            trainer, flops = build_trainer(setting, profile, tokenizer, rows, model_config, steps, batch_size, out_dir)
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
    return Result(setting.label, profile.precision, batch, timer.seconds, sum(real), sum(padded),
                  tokens_per_second, flops, model_flops_utilisation(tokens_per_second, flops, peaks[profile.precision]),
                  memory.peak_bytes / 2**20)


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


def run(args) -> int:
    """The `bench` command: seed-style vs ours (and, with --sweep, one change at a time), then the summary line."""
    from .data import training_chat_template
    from .hardware import describe, detect_hardware
    from .models import load_tokenizer

    if args.model_config != "embedded" and args.model_config not in ARCHITECTURES:
        print(f"error: --model_config is embedded or one of {', '.join(ARCHITECTURES)}", file=sys.stderr)
        return 2
    quiet_libraries()
    profile = detect_hardware(cuda=args.device == "cuda" if args.device else None)
    print(describe(profile))
    steps, batch_size = (2, 2) if args.quick else (args.steps, args.batch_size)
    tokenizer = load_tokenizer("embedded")
    tokenizer.chat_template = training_chat_template(tokenizer)
    rows = persona_rows()
    peaks = measure_peaks(profile.device)
    results = []
    for setting in comparison(args.use_quantization, args.precision, args.sweep):
        print(f"... {setting.label}", flush=True)
        results.append(run_setting(setting, profile, tokenizer, rows, peaks, args.model_config, steps, batch_size))
    peaks = measure_peaks(profile.device, earlier=peaks)  # other jobs on the machine come and go: best of both
    for result in results:
        result.mfu = model_flops_utilisation(result.real_tokens_per_second, result.flops_per_token,
                                             peaks[result.precision])
    print(format_table(results, peaks, profile.device))
    print(summary_line(results[1], results[0]))
    return 0
