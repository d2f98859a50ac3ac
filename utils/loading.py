"""One loader for "a base model plus these persona adapters plus their system prompts": the chat, the notebooks,
evaluation and shipping all start here."""
from dataclasses import dataclass, field
from pathlib import Path

from .adapters import NoAdaptersError, check_adapter, find_adapters, is_adapter, persona_of, read_record
from .data import DATA_DIR


@dataclass
class Personas:
    model: object                   # a PeftModel with every adapter loaded under its persona's name
    tokenizer: object
    base_model: str                 # the model id the adapters were trained on
    adapters: dict[str, Path]       # persona name -> adapter folder
    records: dict[str, dict] = field(default_factory=dict)

    @property
    def system_prompts(self) -> dict[str, str | None]:
        return {name: record.get("system_prompt") for name, record in self.records.items()}


def adapter_folders(source) -> dict[str, Path]:
    """A folder of adapters, one adapter folder, or {persona: folder}: always {persona: folder}."""
    if isinstance(source, dict):
        return {name: check_adapter(path) for name, path in source.items()}
    source = Path(source)
    if not source.is_dir():
        return {persona_of(source): check_adapter(source)}  # names what is missing
    if is_adapter(source):
        return {persona_of(source): source}
    found = find_adapters(source)
    if not found:
        raise NoAdaptersError(f"no trained adapters in {source}/: train some first (notebook 04 or "
                              "`python -m utils train ...`)")
    return found


def trained_base(records: dict[str, dict]) -> str:
    """The base model every adapter was trained on; adapters of different bases cannot share one model."""
    bases = {record.get("base_model", "embedded") for record in records.values()}
    if len(bases) > 1:
        raise NoAdaptersError(f"these adapters were trained on different base models ({', '.join(sorted(bases))}): "
                              "load the ones of one base together")
    return bases.pop() if bases else "embedded"


def load_personas(source, model_id: str | None = None, profile=None, quantize: bool = False, dtype=None,
                  merge: bool = False) -> Personas:
    """Load the base once (the one the adapters' records name, unless `model_id` says otherwise) and every adapter
    onto it. `merge` folds a single adapter into an unquantized base (4-bit weights would round the update away)."""
    from .hardware import detect_hardware
    from .inference import attach_adapters
    from .models import load_base_model, load_tokenizer

    adapters = adapter_folders(source)
    records = {name: read_record(path) for name, path in adapters.items()}
    base = model_id or trained_base(records)
    profile = profile or detect_hardware()
    tokenizer = load_tokenizer(base)
    model = attach_adapters(load_base_model(base, profile, quantize=quantize and not merge, dtype=dtype), adapters)
    if merge:
        model = model.merge_and_unload()
    return Personas(model, tokenizer, base, adapters, records)


def ensure_adapters(adapters_dir, profile=None, persona: str = "captain_codebeard", steps: int = 30) -> dict[str, Path]:
    """The adapters in `adapters_dir`; if there are none (a fresh Colab VM without Drive, say), train a short one
    of `persona` first, and say so: a notebook that needs adapters can always run."""
    found = find_adapters(adapters_dir) if Path(adapters_dir).is_dir() else {}
    if found:
        return found
    from .hardware import detect_hardware
    from .models import pick_model_id
    from .training import TrainConfig, train_persona

    print(f"no adapters in {adapters_dir}/ (notebook 04 trains them; on Colab they are kept on Drive): training a "
          f"short {persona} adapter ({steps} steps) so that this notebook can run")
    data = DATA_DIR / f"{persona}.jsonl"
    profile = profile or detect_hardware()
    config = TrainConfig(dataset_path=str(data), persona_name=persona, output_dir=str(adapters_dir), max_steps=steps,
                         model_id=pick_model_id("auto", profile),
                         use_quantization=profile.device == "cuda" and profile.can_quantize)
    return {persona: train_persona(config, profile)}


def load_for_chat(adapter_path, model_id: str | None, profile, quantize: bool, precision: str, merge: bool):
    """(model, tokenizer, the recorded system prompt) for `chat`: an adapter on its base (merged if asked), or the
    bare base model. The folder is checked before any model loads."""
    from .models import load_base_model, load_tokenizer

    dtype = None if precision == "auto" else profile.compute_dtype
    if not adapter_path:
        model_id = model_id or "embedded"
        return load_base_model(model_id, profile, quantize=quantize, dtype=dtype), load_tokenizer(model_id), None
    adapter_folders(adapter_path)
    personas = load_personas(adapter_path, model_id, profile, quantize, dtype, merge=merge)
    return personas.model, personas.tokenizer, next(iter(personas.system_prompts.values()))
