"""Run the whole series on any CUDA GPU as a free Colab T4 would see it, and write figures/t4_rehearsal.json.

    python scripts/t4_rehearsal.py            # on a GPU machine; a few minutes

As a T4 sees it: the fp16 profile (the capability is reported as 7.5), 15 GiB of GPU memory at most, a 4-bit base,
and a model of SmolLM2-1.7B-Instruct's shape with random weights plus the embedded tokenizer (no hub, no model
file: speed and memory do not depend on the weights' values), with the small step counts the tests use.
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
OUT = ROOT / "figures" / "t4_rehearsal.json"
WORK = ROOT / "build" / "t4_rehearsal"
T4 = {"PERSONA_LORA_CUDA_CAPABILITY": "7.5", "PERSONA_LORA_GPU_MEMORY_GIB": "15"}
SMALL = {  # per notebook: the parameters that keep it short (as the tests run it)
    "04": {"PERSONAS": ["zen_coder", "master_brindlewood"], "MAX_STEPS": 3, "BATCH_SIZE": 4, "OVERWRITE": True},
    "05": {"MAX_NEW_TOKENS": 24, "PROMPTS": ["Any tips for a rainy weekend?", "Why do tests matter?"]},
    "06": {"MAX_PROMPTS": 2, "MAX_NEW_TOKENS": 16, "BLEND_WEIGHTS": [0.0, 0.5, 1.0], "BLEND_PROMPTS": 2,
           "TRAP_COMBINATIONS": ["linear", "cat"]},
    "07": {"STEPS": 2, "SETTINGS": ["ours"]},
    "08": {"ADAPTER_PATH": "trained_adapters/zen_coder_final_adapter", "GGUF_TYPES": ["f16"], "MAX_NEW_TOKENS": 6},
}


class GpuMemoryPeak:
    """The most GPU memory in use (all processes, nvidia-smi) while the block runs, in GiB; None without nvidia-smi."""

    def __enter__(self):
        self.peak, self._done = None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._done.wait(0.5):
            try:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=10).stdout.split()
                self.peak = max(self.peak or 0.0, float(used[0]) / 1024)
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


def report(gpu: str, model: str, results: dict) -> dict:
    return {"precision": "fp16", "gpu": gpu, "model": model, "gpu_memory_cap_gib": float(T4["PERSONA_LORA_GPU_MEMORY_GIB"]),
            "notebooks": results}


def rehearse() -> dict:
    import torch
    from run_series import run_notebook, series

    from utils.random_models import random_checkpoint

    os.environ.update(T4, PERSONA_LORA_GPU_MODEL=str(random_checkpoint("smollm2-1.7b")), HF_HUB_OFFLINE="1")
    results = {}
    for path in series():
        start, status = time.perf_counter(), "ok"
        with GpuMemoryPeak() as memory:
            try:
                run_notebook(path, {"FIGURES_DIR": str(WORK / "figures"), **SMALL.get(path.name[:2], {})},
                             out_dir=WORK / "notebooks")
            except Exception as error:  # noqa: BLE001 - the report records each notebook's failure and goes on
                status = f"failed: {type(error).__name__}: {' '.join(str(error).split())[-300:]}"
        results[path.stem] = {"status": status, "peak_gib": memory.peak and round(memory.peak, 2),
                              "seconds": round(time.perf_counter() - start)}
        print(path.stem, results[path.stem], flush=True)
    return report(torch.cuda.get_device_name(0), "SmolLM2-1.7B-Instruct shape, random weights", results)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("error: the T4 rehearsal needs a CUDA GPU (any: it is made to behave like a T4)", file=sys.stderr)
        return 2
    OUT.write_text(json.dumps(rehearse(), indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
