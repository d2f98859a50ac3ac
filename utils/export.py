"""Ship a persona: package the adapter with a model card, or merge it into a standalone model; either way GGUF files
for llama.cpp and an Ollama Modelfile, written by llama.cpp's own converters (utils.llama_cpp)."""
import json
import shutil
from pathlib import Path

from .adapters import RECORD_FILE, check_adapter, folder_name, persona_of, read_record
from .card import METRICS_FILE, final_metrics, hub_base_model, loading_snippet, write_model_card, write_persona_files
from .llama_cpp import ExportError, convert_adapter, convert_model, ensure_llama_cpp
from .ollama import modelfile_command, write_modelfile


def check_out_folder(out: Path, overwrite: bool):
    """Never write over a folder that already holds files, unless asked to."""
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ExportError(f"{out} already holds files: pass --overwrite to write over them, or choose another --out")


def package_adapter(adapter_path, out, repo_id: str | None = None, metrics_file=METRICS_FILE,
                    overwrite: bool = False, gguf_adapter: bool = False) -> Path:
    """A folder ready for the hub: adapter, tokenizer, persona record with final metrics, system prompt, card; with
    `gguf_adapter`, also the adapter as GGUF, its base as GGUF and a Modelfile applying one to the other."""
    adapter_path, out = Path(adapter_path), Path(out)
    record = read_record(check_adapter(adapter_path))
    check_out_folder(out, overwrite)
    if gguf_adapter:
        ensure_llama_cpp()
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
    if gguf_adapter:
        how_to_load += gguf_adapter_files(adapter_path, out, record)
    write_model_card(out, record, metrics, "adapter", how_to_load)
    return out


def gguf_adapter_files(adapter_path: Path, out: Path, record: dict) -> str:
    """gguf/<persona>-lora-f16.gguf (the adapter alone), gguf/base-f16.gguf (the base it was trained on: an adapter
    applies only to that) and gguf/Modelfile; returns the card's lines on running them."""
    from .models import load_tokenizer, local_checkpoint

    base_dir = local_checkpoint(record.get("base_model", "embedded"))
    base = convert_model(base_dir, out / "gguf" / "base-f16.gguf", "f16")
    adapter = convert_adapter(adapter_path, base_dir, gguf_path(out, record["persona"], "lora-f16"))
    write_modelfile(out / "gguf", base, load_tokenizer(str(base_dir)), record["system_prompt"], adapter)
    return (f"\n\n# llama.cpp applies the adapter-only GGUF to its base's GGUF at load time:\n"
            f"# llama-cli -m gguf/{base.name} --lora gguf/{adapter.name} -sys \"$(cat system_prompt.txt)\"\n"
            f"# Ollama: cd gguf && {modelfile_command(out / 'gguf')}")


def merge_adapter(adapter_path, out, gguf_types=(), repo_id: str | None = None, metrics_file=METRICS_FILE,
                  overwrite: bool = False) -> Path:
    """Base + adapter -> one standalone model folder that loads without peft, and GGUF files of it (f16, q8_0,
    q4_k_m) with a Modelfile for the most compact one."""
    from peft import PeftModel

    from .models import load_base_model, load_tokenizer

    adapter_path, out = Path(adapter_path), Path(out)
    record = read_record(check_adapter(adapter_path))
    check_out_folder(out, overwrite)
    if gguf_types:
        ensure_llama_cpp()
    for stale in [*(out / "gguf").glob("*.gguf"), out / "gguf" / "Modelfile"]:  # an earlier merge's weights
        stale.unlink(missing_ok=True)
    base_id = record.get("base_model", "embedded")
    # Into an unquantized base, in the dtype it is stored in (one copy; fp32 for the embedded model, bf16 for most
    # hub models): in 4-bit weights the small LoRA update would be rounded away (see notebook 05).
    base = load_base_model(base_id, dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    merged.save_pretrained(out)
    # The base's own tokenizer: its chat template has no training-only {% generation %} markers, which other tools
    # (llama.cpp's template engine among them) don't know.
    tokenizer = load_tokenizer(base_id)
    tokenizer.save_pretrained(out)
    write_persona_files(out, record, final_metrics(record, adapter_path, metrics_file))
    persona = persona_of(adapter_path)
    written = [convert_model(out, gguf_path(out, persona, t), t) for t in gguf_types]
    if written:
        smallest = min(written, key=lambda path: path.stat().st_size)
        write_modelfile(out / "gguf", smallest, tokenizer, record["system_prompt"])
    write_merged_card(out, repo_id)
    return out


def gguf_path(merged_dir, persona: str, file_type: str) -> Path:
    # In a subfolder with its Modelfile: all an Ollama or llama.cpp user needs, and nothing else.
    return Path(merged_dir) / "gguf" / f"{folder_name(persona)}-{file_type}.gguf"


def write_merged_card(merged_dir, repo_id: str | None = None):
    """The merged folder's model card, listing the GGUF files it holds."""
    merged_dir = Path(merged_dir)
    record = read_record(merged_dir)
    ggufs = [str(p.relative_to(merged_dir)) for p in sorted((merged_dir / "gguf").glob("*.gguf"))]
    how_to_load = loading_snippet(repo_id, "a plain transformers model: no peft needed")
    if ggufs:
        how_to_load += (f'\n\n# llama.cpp and the tools built on it (LM Studio, Ollama, ...) run {", ".join(ggufs)}:\n'
                        f'# llama-cli -m {ggufs[-1]} -sys "$(cat system_prompt.txt)"'
                        + (f'\n# Ollama: cd gguf && {modelfile_command(merged_dir / "gguf")}'
                           if (merged_dir / "gguf" / "Modelfile").exists() else ""))
    tags = ["merged", "gguf"] if ggufs else ["merged"]
    write_model_card(merged_dir, record, record.get("metrics", {}), "model (LoRA merged)", how_to_load, tags)
