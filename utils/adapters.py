"""The adapter folder: what training writes, how it is saved safely, and how everything else finds and reads it.

    trained_adapters/
    ├── captain_codebeard_final_adapter/   peft's adapter_model.safetensors + adapter_config.json, the tokenizer,
    │                                      and persona.json: the record of how it was made
    └── captain_codebeard_checkpoints/     the trainer's checkpoint-N folders, for --resume
"""
import json
import re
import shutil
from pathlib import Path

from .errors import PersonaLoraError

RECORD_FILE = "persona.json"
FINAL_SUFFIX = "_final_adapter"
CHECKPOINTS_SUFFIX = "_checkpoints"


class AdapterExistsError(PersonaLoraError):
    pass


class NoAdaptersError(PersonaLoraError):
    pass


def folder_name(persona: str) -> str:
    """A persona's name as a folder name: "Captain Hook" -> "Captain_Hook" (the record keeps the name itself)."""
    return re.sub(r"[^\w-]+", "_", persona).strip("_") or "persona"


def final_adapter_dir(output_dir, persona: str) -> Path:
    return Path(output_dir) / f"{folder_name(persona)}{FINAL_SUFFIX}"


def report_path(folder) -> str:
    """How a report names an adapter folder: relative to the working directory when inside it (so a committed
    report reads the same on every machine), absolute otherwise."""
    path = Path(folder).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def checkpoints_dir(output_dir, persona: str) -> Path:
    return Path(output_dir) / f"{folder_name(persona)}{CHECKPOINTS_SUFFIX}"


def is_adapter(folder) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def check_adapter(folder) -> Path:
    """The folder, if it holds an adapter; else one line saying what to pass instead."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoAdaptersError(f"no folder {folder}: pass a *{FINAL_SUFFIX} folder that training wrote")
    if not is_adapter(folder):
        raise NoAdaptersError(f"{folder} holds no adapter_config.json: pass a *{FINAL_SUFFIX} folder from training")
    return folder


def check_can_write(target: Path, overwrite: bool, persona: str):
    """Refuse to replace an existing adapter unless asked: a learner's trained work is never lost silently."""
    if target.exists() and not overwrite:
        raise AdapterExistsError(
            f"{target} already exists. Pass --overwrite to replace it, or keep both by choosing another "
            f"--persona_name (e.g. {persona}_v2) or --output_dir."
        )


def save_adapter_atomically(model, tokenizer, target: Path, record: dict):
    """Write to a temporary folder, then rename: a crash never leaves a half-written adapter behind."""
    target = Path(target)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / RECORD_FILE).write_text(json.dumps(record, indent=2))
    if target.exists():  # only reached with --overwrite
        retired = target.with_name(target.name + ".replaced")
        shutil.rmtree(retired, ignore_errors=True)
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired)
    else:
        staging.rename(target)


def read_record(adapter_dir) -> dict:
    path = Path(adapter_dir) / RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def persona_of(adapter_dir) -> str:
    """`trained_adapters/captain_codebeard_final_adapter` -> `captain_codebeard` (the record's name first)."""
    return read_record(adapter_dir).get("persona") or Path(adapter_dir).name.removesuffix(FINAL_SUFFIX)


def find_adapters(adapters_dir) -> dict[str, Path]:
    """Every finished persona adapter in a folder, by persona name (half-written `.partial` folders are skipped)."""
    folders = sorted(p for p in Path(adapters_dir).glob(f"*{FINAL_SUFFIX}") if is_adapter(p))
    return {persona_of(p): p for p in folders}


def last_complete_checkpoint(checkpoint_dir) -> Path | None:
    """The newest checkpoint that finished writing (the trainer writes trainer_state.json last)."""
    done = [c for c in Path(checkpoint_dir).glob("checkpoint-*") if (c / "trainer_state.json").exists()]
    return max(done, key=lambda c: int(c.name.split("-")[1]), default=None)
