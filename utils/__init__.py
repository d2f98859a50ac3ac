"""Shared helpers for the persona LoRA notebook series: hardware, models, data, training, inference, LoRA, chat."""
import logging
import os

# bitsandbytes' CPU backend looks for an optional kernels-hub download (no network here) and warns on every import.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings  # noqa: E402

# transformers 5 renamed gradient checkpointing to activation checkpointing; its own internals still use the old name.
warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
