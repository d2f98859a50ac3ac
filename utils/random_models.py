"""Models of known shapes with random weights, built from their configs: no download, and the same speed and memory
as the real ones (neither depends on the weights' values). The bench, the T4 rehearsal and the export tests use them."""
import shutil
from pathlib import Path

import torch

from .models import CACHE_DIR

# Vocabularies are at least the embedded tokenizer's 49,152 ids, which the benchmark's data is tokenized with.
ARCHITECTURES = {
    "smollm2-360m": dict(model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True),
    "smollm2-1.7b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "phi-3-mini": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=49152,  # real: 32,064
                       tie_word_embeddings=False),
}


def random_checkpoint(name: str) -> Path:
    """A randomly initialised model of a known architecture, saved once so it loads like any checkpoint (4-bit too)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import load_tokenizer

    target = CACHE_DIR / "random" / name
    if target.is_dir():
        return target
    spec = dict(ARCHITECTURES[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    load_tokenizer("embedded").save_pretrained(staging)  # the embedded tokenizer: its ids fit every vocabulary
    staging.rename(target)
    return target
