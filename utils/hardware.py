"""Pick the device and the training precision from what this machine actually has."""
import functools
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HardwareProfile:
    name: str            # "cuda-bf16", "cuda-fp16", "mps", "cpu-bf16", "cpu-fp32"
    device: str          # "cuda", "mps" or "cpu"
    bf16: bool           # bf16 mixed precision (autocast) during training
    fp16: bool           # fp16 mixed precision with a gradient scaler (adapters stay fp32)
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


def detect_hardware(
    cuda: bool | None = None,
    cuda_bf16: bool | None = None,
    mps: bool | None = None,
    cpu_bf16_speedup_x: float | None = None,
    bnb_4bit: bool | None = None,
) -> HardwareProfile:
    """Decide device and precision. Every fact can be passed in, so tests can simulate any machine."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        cuda_bf16 = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        bnb = bitsandbytes_4bit_available("cuda") if bnb_4bit is None else bnb_4bit
        if cuda_bf16:
            return HardwareProfile("cuda-bf16", "cuda", bf16=True, fp16=False, can_quantize=bnb)
        return HardwareProfile("cuda-fp16", "cuda", bf16=False, fp16=True, can_quantize=bnb,
                               note="no bf16 on this GPU (e.g. a T4): fp16 mixed precision, adapters kept in fp32")
    mps = torch.backends.mps.is_available() if mps is None else mps
    if mps:
        return HardwareProfile("mps", "mps", bf16=False, fp16=False, can_quantize=False,
                               note="Apple GPU: fp32 training, no bitsandbytes 4-bit")
    speedup = cpu_bf16_speedup() if cpu_bf16_speedup_x is None else cpu_bf16_speedup_x
    bnb = bitsandbytes_4bit_available("cpu") if bnb_4bit is None else bnb_4bit
    if speedup > 1.2:
        return HardwareProfile("cpu-bf16", "cpu", bf16=True, fp16=False, can_quantize=bnb,
                               note=f"bf16 matmuls measured {speedup:.1f}x faster than fp32 here: bf16 autocast")
    return HardwareProfile("cpu-fp32", "cpu", bf16=False, fp16=False, can_quantize=bnb,
                           note=f"bf16 not faster on this CPU ({speedup:.1f}x): fp32")


def resolve_precision(profile: HardwareProfile, want_bf16: bool | None = None) -> HardwareProfile:
    """Apply the user's --use_bf16 wish; where bf16 can't run, say so in one line and use fp16 instead."""
    if not want_bf16 or profile.bf16:
        return profile
    if profile.device == "cuda":
        print("bf16 is not supported on this GPU (pre-Ampere, e.g. a T4): training in fp16 instead.")
        return profile
    print(f"bf16 was asked for on {profile.device}; this machine trains faster in {profile.precision}: keeping it.")
    return profile


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
