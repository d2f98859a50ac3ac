"""Pick the device and the training precision from what this machine actually has."""
import dataclasses
import functools
import os
import time
from dataclasses import dataclass

import torch

from .errors import FlagError

PRECISIONS = ("bf16", "fp16", "fp32")
CPU_BF16_WORTH_IT = 1.2  # bf16 matmuls at least this many times faster than fp32: bf16 autocast on this CPU


@dataclass(frozen=True)
class HardwareProfile:
    name: str            # "cuda-bf16", "cuda-fp16", "mps", "cpu-bf16", "cpu-fp32"
    device: str          # "cuda", "mps" or "cpu"
    bf16: bool           # bf16 mixed precision (autocast) during training
    fp16: bool           # fp16 mixed precision with a gradient scaler
    can_quantize: bool   # bitsandbytes 4-bit NF4 is usable here
    note: str = ""

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else torch.float32

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


def _matmul_tflops(dtype: torch.dtype, n: int = 1024, repeats: int = 4) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


@functools.cache
def cpu_bf16_speedup() -> float:
    """How many times faster a bf16 matmul is than an fp32 one on this CPU (measured once, ~0.5 s)."""
    try:
        return _matmul_tflops(torch.bfloat16) / _matmul_tflops(torch.float32)
    except RuntimeError:
        return 0.0


@functools.cache
def bitsandbytes_4bit_available(device: str) -> bool:
    """Try a real 4-bit NF4 quantize/dequantize round trip on `device`."""
    try:
        import bitsandbytes.functional as bnbf

        weight = torch.randn(64, 64, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
        packed, state = bnbf.quantize_4bit(weight, quant_type="nf4")
        return bnbf.dequantize_4bit(packed, state).shape == weight.shape
    except Exception:  # any import or kernel failure means "not here"
        return False


def cuda_capability() -> tuple[int, int]:
    """The GPU's compute capability; PERSONA_LORA_CUDA_CAPABILITY="7.5" makes any GPU decide as a T4 would."""
    forced = os.environ.get("PERSONA_LORA_CUDA_CAPABILITY")
    if forced:
        major, minor = forced.split(".")
        return int(major), int(minor)
    return torch.cuda.get_device_capability(0)


def detect_hardware(
    cuda: bool | None = None,
    capability: tuple[int, int] | None = None,
    mps: bool | None = None,
    cpu_bf16_speedup_x: float | None = None,
    bnb_4bit: bool | None = None,
) -> HardwareProfile:
    """Decide device and precision. Every fact can be passed in, so tests can simulate any machine.

    On CUDA, bf16 needs compute capability 8.0 (Ampere) or newer. `torch.cuda.is_bf16_supported()` is not asked: it
    answers True on a T4 (7.5), where bf16 tensors exist but run emulated, several times slower than fp16.
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        major, minor = cuda_capability() if capability is None else capability
        bnb = bitsandbytes_4bit_available("cuda") if bnb_4bit is None else bnb_4bit
        if major >= 8:
            return HardwareProfile("cuda-bf16", "cuda", bf16=True, fp16=False, can_quantize=bnb,
                                   note=f"compute capability {major}.{minor}: bf16 mixed precision")
        return HardwareProfile("cuda-fp16", "cuda", bf16=False, fp16=True, can_quantize=bnb,
                               note=f"compute capability {major}.{minor} has no fast bf16 (e.g. a T4): "
                                    "fp16 mixed precision with a gradient scaler")
    mps = torch.backends.mps.is_available() if mps is None else mps
    if mps:
        return HardwareProfile("mps", "mps", bf16=False, fp16=False, can_quantize=False,
                               note="Apple GPU: fp32 training, no bitsandbytes 4-bit")
    speedup = cpu_bf16_speedup() if cpu_bf16_speedup_x is None else cpu_bf16_speedup_x
    bnb = bitsandbytes_4bit_available("cpu") if bnb_4bit is None else bnb_4bit
    if speedup > CPU_BF16_WORTH_IT:
        return HardwareProfile("cpu-bf16", "cpu", bf16=True, fp16=False, can_quantize=bnb,
                               note=f"bf16 matmuls measured {speedup:.1f}x faster than fp32 here: bf16 autocast")
    return HardwareProfile("cpu-fp32", "cpu", bf16=False, fp16=False, can_quantize=bnb,
                           note=f"bf16 not faster on this CPU ({speedup:.1f}x): fp32")


def with_precision(profile: HardwareProfile, precision: str | None) -> HardwareProfile:
    """The profile in another precision ("auto" or None keeps it). Raises FlagError where it cannot run."""
    if precision in (None, "auto", profile.precision):
        return profile
    if precision not in PRECISIONS:
        raise FlagError(f"--precision must be one of auto, {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp16" and profile.device == "cpu":
        raise FlagError("--precision fp16 needs a CUDA GPU (CPUs have no fp16 gradient scaling); "
                             "use bf16 or fp32 on a CPU")
    if precision == "bf16" and profile.device in ("mps",):
        raise FlagError(f"--precision bf16 does not train on {profile.device}; use fp32")
    note = f"precision {precision} asked for (this machine's choice: {profile.precision})"
    if precision == "bf16" and profile.name == "cuda-fp16":
        note += "; this GPU emulates bf16, expect it to be slow"
    return dataclasses.replace(profile, name=f"{profile.device}-{precision}", bf16=precision == "bf16",
                               fp16=precision == "fp16", note=note)


def describe(profile: HardwareProfile) -> str:
    lines = [f"device: {profile.device}   precision: {profile.precision}   4-bit: {'yes' if profile.can_quantize else 'no'}"]
    if profile.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        import psutil

        lines.append(f"CPU cores: {torch.get_num_threads()}, RAM: {psutil.virtual_memory().total / 2**30:.1f} GiB")
    if profile.note:
        lines.append(profile.note)
    return "\n".join(lines)
