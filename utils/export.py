"""Ship a persona: package the adapter with a model card, merge it into a standalone model, export GGUF, publish."""
import json
import shutil
from pathlib import Path

from .training import RECORD_FILE, read_record

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub model the embedded copy was quantized from
BASE_LICENSES = {"HuggingFaceTB/SmolLM2-": "apache-2.0"}  # id prefix -> license; others: check the base's card
METRICS_FILE = Path("figures") / "persona_metrics.json"  # evaluation results, once notebook 06 has written them
GGUF_TYPES = ("f16", "q8_0")


class ExportError(RuntimeError):
    """Packaging, export or publishing failed; the message says why and what to do, in one line."""


# --- what the card says -------------------------------------------------------------------------------------------

def hub_base_model(record: dict) -> str:
    base = record.get("base_model", "embedded")
    return EMBEDDED_HUB_ID if base == "embedded" else base


def base_license(base_id: str) -> str:
    return next((lic for prefix, lic in BASE_LICENSES.items() if base_id.startswith(prefix)), "other")


def evaluation_metrics(persona: str, adapter_path, metrics_file=METRICS_FILE) -> dict:
    """This adapter's numbers from the evaluation report (utils.evaluate), if that report evaluated this very folder
    (another adapter of the same persona has other numbers)."""
    path = Path(metrics_file)
    if not path.exists():
        return {}
    report = json.loads(path.read_text())
    if report.get("adapters", {}).get(persona) != str(Path(adapter_path).resolve()):
        return {}
    entry = report.get("personas", {}).get(persona, {})
    return {k: round(v, 4) for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def final_metrics(record: dict, adapter_path, metrics_file=METRICS_FILE) -> dict:
    """Last training loss, last held-out loss, and any evaluation results: the figures a card reports."""
    history = record.get("loss_history", {})
    metrics = {}
    if history.get("train"):
        metrics["final_train_loss"] = round(history["train"][-1]["loss"], 4)
    if history.get("eval"):
        metrics["final_eval_loss"] = round(history["eval"][-1]["eval_loss"], 4)
    return metrics | evaluation_metrics(record.get("persona", ""), adapter_path, metrics_file)


def training_table(record: dict) -> str:
    s = record.get("settings", {})
    base = record.get("base_model", "embedded")
    rows = {
        "base model": (f"{EMBEDDED_HUB_ID} (the series' embedded copy: llama.cpp Q4_1 weights, dequantized)"
                       if base == "embedded" else base),
        "method": (f"{'QLoRA (4-bit NF4 base)' if record.get('quantized') else 'LoRA'}: r={s.get('lora_r')}, "
                   f"alpha={s.get('lora_alpha')}, dropout={s.get('lora_dropout')}, on every linear layer"),
        "data": (f"{record.get('train_examples')} conversations ({record.get('eval_examples')} more held out), "
                 f"loss on the assistant's tokens only"),
        "schedule": (f"{record.get('global_steps')} steps, batch {s.get('per_device_train_batch_size')} x "
                     f"{s.get('gradient_accumulation_steps')} accumulation, learning rate {s.get('learning_rate')} "
                     f"(cosine), max_seq_length {s.get('max_seq_length')}, seed {s.get('seed')}"),
        "hardware": (f"{record.get('hardware')} ({record.get('precision')}), "
                     f"{record.get('train_seconds')} s of training"),
    }
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows.items())


def metrics_section(metrics: dict) -> str:
    if not metrics:
        return "Not evaluated yet."
    table = "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in metrics.items())
    if not set(metrics) - {"final_train_loss", "final_eval_loss"}:
        table += "\n\nOnly the losses from training: not evaluated yet beyond them (notebook 06 evaluates personas)."
    return table


def loading_snippet(repo_id: str | None, comment: str) -> str:
    source = repo_id or "path/to/this/folder"
    return (f'from transformers import AutoModelForCausalLM, AutoTokenizer\n'
            f'model = AutoModelForCausalLM.from_pretrained("{source}")  # {comment}\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{source}")')


def write_model_card(folder: Path, record: dict, metrics: dict, kind: str, how_to_load: str, extra_tags=()):
    """README.md: the hub's YAML metadata header, then what the persona is, how it was made, how to use it."""
    from huggingface_hub import ModelCard, ModelCardData

    persona, base_id = record.get("persona", folder.name), hub_base_model(record)
    header = ModelCardData(base_model=base_id, library_name="peft" if kind == "adapter" else "transformers",
                           license=base_license(base_id), pipeline_tag="text-generation",
                           tags=["lora", "persona", persona, *extra_tags])
    license_note = ("" if header.license != "other" else
                    f"\n**License:** set `license:` above to {base_id}'s license: this model inherits its terms.\n")
    body = f"""
# {persona}: a persona {kind} for {base_id}

A LoRA fine-tune that makes [{base_id}](https://huggingface.co/{base_id}) answer as **{persona}**, made with the
persona-lora notebook series. It was trained with this system prompt (also in `system_prompt.txt`); use it too:

> {record.get("system_prompt") or "(none)"}
{license_note}
## Use it

```python
{how_to_load}
```

## How it was trained

{training_table(record)}

## Evaluation

{metrics_section(metrics)}

## Limitations

A small model with a small persona data set: expect the persona's style more than new knowledge, and the base
model's limitations and license.
"""
    ModelCard(f"---\n{header.to_yaml()}\n---\n{body}").save(folder / "README.md")


def write_persona_files(folder: Path, record: dict, metrics: dict):
    (folder / RECORD_FILE).write_text(json.dumps(record | {"metrics": metrics}, indent=2))
    (folder / "system_prompt.txt").write_text((record.get("system_prompt") or "") + "\n")


# --- package ------------------------------------------------------------------------------------------------------

def adapter_record(adapter_path: Path) -> dict:
    if not (adapter_path / "adapter_config.json").exists():
        raise ExportError(f"{adapter_path} holds no adapter_config.json: pass a *_final_adapter folder from training")
    return read_record(adapter_path)


def check_out_folder(out: Path, overwrite: bool):
    """Never write over a folder that already holds files, unless asked to."""
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ExportError(f"{out} already holds files: pass --overwrite to write over them, or choose another --out")


def package_adapter(adapter_path, out, repo_id: str | None = None, metrics_file=METRICS_FILE,
                    overwrite: bool = False) -> Path:
    """A folder ready for the hub: adapter, tokenizer, persona record with final metrics, system prompt, card."""
    adapter_path, out = Path(adapter_path), Path(out)
    record = adapter_record(adapter_path)
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


# --- merge --------------------------------------------------------------------------------------------------------

def merge_adapter(adapter_path, out, gguf_types=(), repo_id: str | None = None, metrics_file=METRICS_FILE,
                  overwrite: bool = False) -> Path:
    """Base + adapter -> one standalone model folder (and GGUF files), that loads without peft."""
    import torch
    from peft import PeftModel

    from .models import load_base_model, load_tokenizer

    adapter_path, out = Path(adapter_path), Path(out)
    record = adapter_record(adapter_path)
    check_out_folder(out, overwrite)
    base_id = record.get("base_model", "embedded")
    # Into an unquantized fp32 base: in 4-bit weights the small LoRA update would be rounded away (see notebook 05).
    base = load_base_model(base_id, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    merged.save_pretrained(out)
    # The base's own tokenizer: its chat template has no training-only {% generation %} markers, which other tools
    # (llama.cpp's template engine among them) don't know.
    load_tokenizer(base_id).save_pretrained(out)
    write_persona_files(out, record, final_metrics(record, adapter_path, metrics_file))
    persona = record.get("persona", adapter_path.name.removesuffix("_final_adapter"))
    for file_type in gguf_types:
        export_gguf(out, gguf_path(out, persona, file_type), file_type)
    write_merged_card(out, repo_id)
    return out


def gguf_path(merged_dir, persona: str, file_type: str) -> Path:
    # In a subfolder: next to a tokenizer.json, transformers would read that instead of the GGUF's own tokenizer.
    return Path(merged_dir) / "gguf" / f"{persona}-{file_type}.gguf"


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


# --- GGUF ---------------------------------------------------------------------------------------------------------

def gguf_architecture(config):
    """The gguf package's architecture for this model; only the Llama family is written (and tested) here."""
    import gguf

    supported = {"llama": gguf.MODEL_ARCH.LLAMA}
    if config.model_type not in supported:
        raise ExportError(f"GGUF export supports model_type {sorted(supported)} (Llama family: SmolLM2, Llama 2/3, "
                          f"TinyLlama), not {config.model_type!r} yet; llama.cpp's convert_hf_to_gguf.py covers more")
    return supported[config.model_type]


def permute_for_llama_cpp(weight, n_head: int):
    """llama.cpp's rotary embedding pairs neighbouring dimensions (0,1), (2,3), ... of each head, transformers' pairs
    the two halves (i, i + head_dim/2): reorder the q/k output rows to match (convert_hf_to_gguf.py does the same;
    transformers' GGUF loader undoes it)."""
    rows, rest = weight.shape[0], weight.shape[1:]
    return weight.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model_dir: Path, config, arch):
    """(GGUF name, float32 numpy array) for every weight of a saved transformers checkpoint."""
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():
                tensor = weights.get_tensor(name).float().numpy()
                if name.endswith("q_proj.weight"):
                    tensor = permute_for_llama_cpp(tensor, config.num_attention_heads)
                elif name.endswith("k_proj.weight"):
                    tensor = permute_for_llama_cpp(tensor, config.num_key_value_heads)
                yield names.get_name(name, try_suffixes=(".weight", ".bias")), tensor


def gguf_vocab(tokenizer, n_vocab: int):
    """Token strings (byte-level, as in tokenizer.json) and llama.cpp token types, by id."""
    from gguf import TokenType

    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        if i not in by_id:
            types.append(TokenType.UNUSED)
        elif i in added:
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
    return tokens, types


def llama_cpp_pre_tokenizer(model_dir: Path) -> str:
    """llama.cpp picks its text-splitting rules by name (convert_hf_to_gguf.py recognises a tokenizer by hashing how
    it encodes a test text). The series' models are SmolLM2s; other families need their name from that script."""
    record = read_record(model_dir)
    return "smollm" if "smollm" in hub_base_model(record).lower() else "default"


def export_gguf(model_dir, path, file_type: str = "f16") -> Path:
    """Write a saved transformers model folder as one GGUF file: metadata, tokenizer, then the tensors."""
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    if file_type not in GGUF_TYPES:
        raise ExportError(f"GGUF type {file_type!r} is not one of {list(GGUF_TYPES)}")
    model_dir, path = Path(model_dir), Path(path)
    config = AutoConfig.from_pretrained(model_dir)
    arch = gguf_architecture(config)
    quant = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[file_type]
    record = read_record(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])

    writer.add_name(record.get("persona", model_dir.name))
    writer.add_license(base_license(hub_base_model(record)))
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, hub_base_model(record))
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # The model's shape, under llama.cpp's key names.
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)

    # The tokenizer travels inside the file: vocabulary, merges, special ids, whether to add BOS, chat template.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens, types = gguf_vocab(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre(llama_cpp_pre_tokenizer(model_dir))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_add_bos_token(tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=config.vocab_size).add_to_gguf(writer, quiet=True)

    block_size, _ = gguf.GGML_QUANT_SIZES[quant]
    for name, tensor in gguf_tensors(model_dir, config, arch):
        # Like llama.cpp: 1-D tensors (the norms) stay float32; the rest in `quant`, q8_0 in blocks of 32 values.
        if tensor.ndim == 1 or tensor.shape[-1] % block_size:
            writer.add_tensor(name, tensor)
        else:
            writer.add_tensor(name, gguf.quantize(tensor, quant), raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- publish ------------------------------------------------------------------------------------------------------

def push_to_hub(folder, repo_id: str, private: bool = True) -> str:
    """Upload a prepared folder to a (private, by default) model repo, with the token from `hf auth login`."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload persona from persona-lora")
    except Exception as error:  # no network, no login, no write access: one line, not a traceback
        detail = " ".join(str(error).split())[:200]
        raise ExportError(f"could not push {folder} to {repo_id}: {type(error).__name__}: {detail} "
                          "(log in with `hf auth login` and a write token; check the network)") from None
    return str(url)


# --- command line -------------------------------------------------------------------------------------------------

def add_ship_arguments(parser, merge: bool):
    parser.add_argument("--adapter_path", required=True, help="a *_final_adapter folder from training")
    parser.add_argument("--out", required=True, help="the folder to write (and to upload with --push_to_hub)")
    if merge:
        parser.add_argument("--gguf", action="append", choices=GGUF_TYPES, default=[],
                            help="also write <out>/gguf/<persona>-<type>.gguf for llama.cpp (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="write over files already in --out")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the folder to this private hub repo")


def run_package(args):
    ship(package_adapter(args.adapter_path, args.out, repo_id=args.push_to_hub, overwrite=args.overwrite),
         args.push_to_hub)


def run_merge(args):
    ship(merge_adapter(args.adapter_path, args.out, gguf_types=args.gguf, repo_id=args.push_to_hub,
                       overwrite=args.overwrite), args.push_to_hub)


def file_sizes(folder) -> dict[str, int]:
    """Bytes per file, by path inside `folder`: what an upload of it sends."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def ship(folder: Path, repo_id: str | None):
    for name, size in file_sizes(folder).items():
        print(f"{size / 2**20:9.1f} MiB  {name}")
    print(f"written to {folder}")
    if repo_id:
        print("pushed to", push_to_hub(folder, repo_id))
