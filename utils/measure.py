"""What the benchmark measures: the machine's matmul peak, model FLOPs per token and MFU, peak memory, step times,
and the real (non-padding) tokens in each batch.

With a frozen base and LoRA a token costs 4·N FLOPs (forward 2·N, backward to the inputs 2·N, no weight gradients
for the frozen weights), ×1.5 with activation checkpointing (the forward runs twice). N counts the weights of every
linear layer, the LM head included; attention scores and LoRA's small matmuls are left out.
"""
import gc
import threading
import time

import torch


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
