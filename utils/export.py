"""Ship a persona: package the adapter with a model card, or merge it into a standalone model (and GGUF files)."""
import json
import shutil
from pathlib import Path

from .adapters import RECORD_FILE, check_adapter, folder_name, persona_of, read_record
from .card import METRICS_FILE, final_metrics, hub_base_model, loading_snippet, write_model_card, write_persona_files
from .gguf_export import ExportError, export_gguf


def check_out_folder(out: Path, overwrite: bool):
    """Never write over a folder that already holds files, unless asked to."""
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ExportError(f"{out} already holds files: pass --overwrite to write over them, or choose another --out")


def package_adapter(adapter_path, out, repo_id: str | None = None, metrics_file=METRICS_FILE,
                    overwrite: bool = False) -> Path:
    """A folder ready for the hub: adapter, tokenizer, persona record with final metrics, system prompt, card."""
    adapter_path, out = Path(adapter_path), Path(out)
    record = read_record(check_adapter(adapter_path))
    check_out_folder(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    for path in adapter_path.iterdir():  # the adapter and its tokenizer files
        if path.is_file() and path.name not in (RECORD_FILE, "README.md"):
            shutil.copy2(path, out / path.name)
    # peft saved the local path of the base it trained on; anyone else loads the base from the hub.
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = hub_base_model(record)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    metrics = final_metrics(record, adapter_path, metrics_file)
    write_persona_files(out, record, metrics)
    how_to_load = loading_snippet(repo_id, "with peft installed: the base + this adapter")
    write_model_card(out, record, metrics, "adapter", how_to_load)
    return out



def merge_adapter(adapter_path, out, gguf_types=(), repo_id: str | None = None, metrics_file=METRICS_FILE,
                  overwrite: bool = False) -> Path:
    """Base + adapter -> one standalone model folder (and GGUF files), that loads without peft."""
    from peft import PeftModel

    from .models import load_base_model, load_tokenizer

    adapter_path, out = Path(adapter_path), Path(out)
    record = read_record(check_adapter(adapter_path))
    check_out_folder(out, overwrite)
    base_id = record.get("base_model", "embedded")
    # Into an unquantized base, in the dtype it is stored in (one copy; fp32 for the embedded model, bf16 for most
    # hub models): in 4-bit weights the small LoRA update would be rounded away (see notebook 05).
    base = load_base_model(base_id, dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    merged.save_pretrained(out)
    # The base's own tokenizer: its chat template has no training-only {% generation %} markers, which other tools
    # (llama.cpp's template engine among them) don't know.
    load_tokenizer(base_id).save_pretrained(out)
    write_persona_files(out, record, final_metrics(record, adapter_path, metrics_file))
    persona = persona_of(adapter_path)
    for file_type in gguf_types:
        export_gguf(out, gguf_path(out, persona, file_type), file_type)
    write_merged_card(out, repo_id)
    return out


def gguf_path(merged_dir, persona: str, file_type: str) -> Path:
    # In a subfolder: next to a tokenizer.json, transformers would read that instead of the GGUF's own tokenizer.
    return Path(merged_dir) / "gguf" / f"{folder_name(persona)}-{file_type}.gguf"


def write_merged_card(merged_dir, repo_id: str | None = None):
    """The merged folder's model card, listing the GGUF files it holds."""
    merged_dir = Path(merged_dir)
    record = read_record(merged_dir)
    ggufs = [str(p.relative_to(merged_dir)) for p in sorted((merged_dir / "gguf").glob("*.gguf"))]
    how_to_load = loading_snippet(repo_id, "a plain transformers model: no peft needed")
    if ggufs:
        how_to_load += (f'\n\n# llama.cpp and the tools built on it (LM Studio, Ollama, ...) run {", ".join(ggufs)}:\n'
                        f'# llama-cli -m {ggufs[-1]} -sys "$(cat system_prompt.txt)"')
    tags = ["merged", "gguf"] if ggufs else ["merged"]
    write_model_card(merged_dir, record, record.get("metrics", {}), "model (LoRA merged)", how_to_load, tags)
