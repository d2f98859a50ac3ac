"""The model card: what a persona is, how it was made and how well it works, with the hub's YAML header."""
import json
from pathlib import Path

from .adapters import RECORD_FILE, report_path

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub model the embedded copy was quantized from
BASE_LICENSES = {"HuggingFaceTB/SmolLM2-": "apache-2.0"}  # id prefix -> license; others: check the base's card
METRICS_FILE = Path("figures") / "persona_metrics.json"  # evaluation results, once notebook 06 has written them


def lora_layers(targets: str) -> str:
    from .training import LORA_TARGETS  # training imports torch: only when a card is written

    modules = LORA_TARGETS[targets]
    if modules == "all-linear":
        return "on every linear layer"
    return f"on the {', '.join(m.removesuffix('_proj') for m in modules)} projections"


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
    if report.get("adapters", {}).get(persona) != report_path(adapter_path):
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
                   f"alpha={s.get('lora_alpha')}, dropout={s.get('lora_dropout')}, "
                   f"{lora_layers(s.get('lora_targets', 'all-linear'))}"),
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
