"""Train a persona LoRA adapter with trl's SFTTrainer. `build_trainer` is the one place a trainer is assembled:
training, the benchmark, notebook 04's lesson and the multi-process path all go through it."""
import copy
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .adapters import (check_can_write, checkpoints_dir, final_adapter_dir, last_complete_checkpoint,
                       save_adapter_atomically)
from .data import DATA_DIR, load_conversations, system_prompt_of
from .errors import FlagError, PersonaLoraError
from .fastpath import fast_attention, lm_head_positions
from .hardware import PRECISIONS, with_precision
from .masking import check_masks, training_chat_template
from .progress import progress_callbacks


class TrainingError(PersonaLoraError):
    pass


@dataclass
class TrainConfig:
    dataset_path: str
    persona_name: str
    model_id: str = "embedded"
    output_dir: str = "trained_adapters"
    max_seq_length: int = 384
    use_quantization: bool = False
    precision: str = "auto"
    num_train_epochs: float = 2.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-3
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # dropout draws a mask per adapter input per step: measurable on a CPU (bench --sweep)
    use_rslora: bool = False
    lora_targets: str = "all-linear"  # or "attention": q, k, v and o projections only (LORA_TARGETS)
    neftune_noise_alpha: float = 0.0  # NEFTune: noise on the input embeddings while training (persona_recipe)
    full_sequence_loss: bool = False
    replay_fraction: float = 0.0  # extra training rows of the base model's own plain replies, per persona row (replay)
    loss_type: str = "nll"  # "dft": each token's loss weighed by the model's own probability of it (trl's DFT)
    keep_best: bool = False  # the checkpoint with the lowest eval loss instead of the last (it looped more: 06)
    eval_fraction: float = 0.1
    save_steps: int = 0  # 0: save (and evaluate) once per epoch
    save_total_limit: int = 2
    gradient_checkpointing: bool = False
    seed: int = 42
    report_to: str = "none"
    overwrite: bool = False
    resume: bool = False
    allow_unquantized: bool = False

    @property
    def adapter_dir(self) -> Path:
        return final_adapter_dir(self.output_dir, self.persona_name)

    @property
    def checkpoint_dir(self) -> Path:
        return checkpoints_dir(self.output_dir, self.persona_name)


# Which linear layers get an adapter: peft's "all-linear" (every one but the output head), or the attention
# projections alone (Llama-family names), which leaves the MLPs, where much of what a model knows is stored, as is.
LORA_TARGETS = {"all-linear": "all-linear", "attention": ["q_proj", "k_proj", "v_proj", "o_proj"]}
RECIPES_FILE = DATA_DIR / "recipes.json"


def persona_recipe(persona_name: str, path=RECIPES_FILE) -> dict:
    """The settings the recipe sweep (06) chose for this persona on top of TrainConfig's defaults, from
    persona_data/recipes.json ({} for a persona it does not name; its "why" is for the reader)."""
    recipes = json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).exists() else {}
    recipe = {key: value for key, value in recipes.get(persona_name, {}).items() if key != "why"}
    unknown = sorted(set(recipe) - {field.name for field in dataclasses.fields(TrainConfig)})
    if unknown:
        raise FlagError(f"{path}: {persona_name}: {', '.join(unknown)} is not a training setting (see TrainConfig)")
    return recipe


RANGES = {  # flag: (test, what is allowed)
    "max_seq_length": (lambda v: v >= 16, "an integer >= 16"),
    "num_train_epochs": (lambda v: v > 0, "a number > 0"),
    "max_steps": (lambda v: v == -1 or v >= 1, "-1 (use the epochs) or an integer >= 1"),
    "per_device_train_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "an integer >= 1"),
    "learning_rate": (lambda v: 0 < v < 1, "a number between 0 and 1, e.g. 3e-4"),
    "lora_r": (lambda v: v >= 1, "an integer >= 1"),
    "lora_alpha": (lambda v: v > 0, "a number > 0"),
    "lora_dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "lora_targets": (lambda v: v in LORA_TARGETS, " or ".join(LORA_TARGETS)),
    "neftune_noise_alpha": (lambda v: v >= 0, "a number >= 0 (0: off)"),
    "replay_fraction": (lambda v: 0 <= v <= 1, "a number in [0, 1] (0: off)"),
    "eval_fraction": (lambda v: 0 <= v <= 0.5, "a number in [0, 0.5]"),
    "save_steps": (lambda v: v >= 0, "an integer >= 0 (0: once per epoch)"),
    "save_total_limit": (lambda v: v >= 1, "an integer >= 1"),
    "persona_name": (lambda v: bool(v.strip()), "a non-empty name"),
    "loss_type": (lambda v: v in ("nll", "dft"), "nll or dft"),
    "precision": (lambda v: v in ("auto", *PRECISIONS), f"one of auto, {', '.join(PRECISIONS)}"),
    "report_to": (lambda v: v in ("none", "tensorboard"), "none or tensorboard"),
}


def check_config(config: TrainConfig):
    """Every setting in range, before anything loads; the message names the flag and what it accepts."""
    for name, (allowed, description) in RANGES.items():
        value = getattr(config, name)
        if name == "num_train_epochs" and config.max_steps > 0:
            continue
        if not allowed(value):
            raise FlagError(f"--{name} {value!r} is out of range: use {description}")


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      use_rslora=config.use_rslora, target_modules=LORA_TARGETS[config.lora_targets],
                      task_type="CAUSAL_LM")


def steps_per_epoch(config: TrainConfig, n_train: int, processes: int = 1) -> int:
    return math.ceil(n_train / (config.per_device_train_batch_size * config.gradient_accumulation_steps * processes))


def sft_config(config: TrainConfig, profile, n_train: int, has_eval: bool):
    """The trainer's settings. Evaluation and saving share one schedule (once per epoch unless --save_steps), so
    the checkpoint with the lowest eval loss can be kept at the end (--keep_best)."""
    from accelerate import PartialState
    from trl import SFTConfig

    every = config.save_steps or steps_per_epoch(config, n_train, PartialState().num_processes)
    if config.max_steps > 0:
        every = min(every, config.max_steps)  # a short run still ends with an evaluation and a checkpoint
    keep_best = has_eval and config.keep_best
    return SFTConfig(
        output_dir=str(config.checkpoint_dir),
        max_length=config.max_seq_length,
        assistant_only_loss=not config.full_sequence_loss,
        loss_type=config.loss_type,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        neftune_noise_alpha=config.neftune_noise_alpha or None,
        bf16=profile.bf16,
        fp16=profile.fp16,
        use_cpu=profile.device == "cpu",
        activation_checkpointing=config.gradient_checkpointing,
        train_sampling_strategy="group_by_length",
        ddp_find_unused_parameters=False,
        logging_steps=1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=every,
        eval_on_start=has_eval,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        report_to=config.report_to,
        seed=config.seed,
        data_seed=config.seed,
        dataset_num_proc=None,
        disable_tqdm=False,
    )


def split_train_eval(conversations, eval_fraction, seed):
    shuffled = conversations[:]
    random.Random(seed).shuffle(shuffled)
    n_eval = int(len(shuffled) * eval_fraction)
    return shuffled[n_eval:], shuffled[:n_eval]


REPLAY_FILE = DATA_DIR / "neutral" / "base_model.jsonl"


def replay_rows(fraction: float, n_train: int, seed: int, path=REPLAY_FILE) -> list[dict]:
    """Replay against forgetting: `fraction`·n_train of the base model's own replies to plain questions (no system
    prompt, scripts/make_base_replies.py), the looping ones left out. Training on them teaches the adapter to leave
    the base as it was wherever no persona is asked for, so the persona's rows can be learned harder."""
    from .evaluate import loops

    if not fraction:
        return []
    pool = [c for c in load_conversations(path) if not loops(c["messages"][-1]["content"])]
    return random.Random(seed).sample(pool, min(len(pool), round(fraction * n_train)))


def load_for_training(config: TrainConfig, profile):
    """The base model in the compute dtype (or 4-bit NF4), ready for LoRA; returns (model, quantized)."""
    from peft import prepare_model_for_kbit_training

    from .models import load_base_model

    quantize = config.use_quantization
    if quantize and not profile.can_quantize:
        message = "bitsandbytes 4-bit is not available on this machine"
        if not config.allow_unquantized:
            raise TrainingError(message + "; drop --use_quantization (or pass --allow_unquantized) to train unquantized.")
        print(message + ": continuing unquantized, as --allow_unquantized allows.")
        quantize = False
    model = load_base_model(config.model_id, profile, quantize=quantize, dtype=profile.compute_dtype)
    if quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return fast_attention(model, profile), quantize


def keep_adapters_in_fp32(model):
    """fp32 master weights for LoRA on every profile. trl casts a 4-bit model's LoRA weights to bf16 (the QLoRA
    paper's choice on A100s); under a T4's fp16 autocast and gradient scaler that would leave 8-bit-mantissa weights
    whose small updates round away. Autocast still runs the matmuls in 16 bits."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def build_trainer(config: TrainConfig, profile, tokenizer, conversations=None, model=None, sft_overrides=None,
                  callbacks=()):
    """Base model, LoRA, SFTConfig, datasets and callbacks: the SFTTrainer every part of the series trains with.

    The trainer gets a copy of the tokenizer carrying the training template (`{% generation %}` markers for
    assistant-only loss, utils/masking.py); the caller's tokenizer, and what gets saved, keep the base template.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    profile = with_precision(profile, config.precision)
    conversations = conversations or load_conversations(config.dataset_path, persona=config.persona_name)
    train, held_out = split_train_eval(conversations, config.eval_fraction, config.seed)
    replay = replay_rows(config.replay_fraction, len(train), config.seed)
    train = train + replay
    if model is None:
        model, _ = load_for_training(config, profile)
    trainer_tokenizer = copy.deepcopy(tokenizer)
    trainer_tokenizer.chat_template = training_chat_template(tokenizer)
    args = sft_config(config, profile, len(train), has_eval=bool(held_out))
    if sft_overrides:
        args = dataclasses.replace(args, **sft_overrides)
    as_dataset = lambda rows: Dataset.from_list([{"messages": r["messages"]} for r in rows])  # noqa: E731
    trainer = SFTTrainer(model=model, args=args, train_dataset=as_dataset(train),
                         eval_dataset=as_dataset(held_out) if held_out else None, processing_class=trainer_tokenizer,
                         peft_config=lora_config(config),
                         callbacks=[*callbacks, *progress_callbacks(config.persona_name)])
    keep_adapters_in_fp32(trainer.model)
    trainer.split = {"train": len(train), "replay": len(replay), "eval": len(held_out)}
    return trainer


def loss_history(log_history) -> dict:
    train = [{"step": e["step"], "epoch": e.get("epoch"), "loss": e["loss"]} for e in log_history if "loss" in e]
    evals = [{"step": e["step"], "epoch": e.get("epoch"), "eval_loss": e["eval_loss"]}
             for e in log_history if "eval_loss" in e]
    return {"train": train, "eval": evals}


def _out_of_memory_advice(config: TrainConfig) -> str:
    half_batch = max(1, config.per_device_train_batch_size // 2)
    return (f"out of memory while training. Lower --per_device_train_batch_size from "
            f"{config.per_device_train_batch_size} to {half_batch} (raise --gradient_accumulation_steps to "
            f"{config.gradient_accumulation_steps * 2} to keep the effective batch), lower --max_seq_length from "
            f"{config.max_seq_length} to {max(64, config.max_seq_length // 2)}"
            + ("" if config.use_quantization else ", or add --use_quantization (4-bit base, ~4x less weight memory)")
            + ". See notebooks/TROUBLESHOOTING.md.")


def train_persona(config: TrainConfig, profile=None, tokenizer=None, model=None) -> Path:
    """Train one persona adapter and return the folder it was saved to."""
    import torch

    from .hardware import detect_hardware
    from .models import load_tokenizer

    check_config(config)
    check_can_write(config.adapter_dir, config.overwrite, config.persona_name)
    conversations = load_conversations(config.dataset_path, persona=config.persona_name)  # before any model loads
    profile = with_precision(profile or detect_hardware(), config.precision)
    tokenizer = tokenizer or load_tokenizer(config.model_id)
    check_masks(tokenizer, conversations, config.dataset_path, config.max_seq_length)
    trainer = build_trainer(config, profile, tokenizer, conversations, model)
    resume_from = last_complete_checkpoint(config.checkpoint_dir) if config.resume else None
    if config.resume:
        print(f"Resuming from {resume_from}" if resume_from else "No complete checkpoint to resume from: starting fresh")
    start = time.perf_counter()
    try:
        with lm_head_positions("trained"):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except torch.OutOfMemoryError:
        raise TrainingError(_out_of_memory_advice(config)) from None
    seconds = time.perf_counter() - start
    record = training_record(config, profile, trainer, conversations, seconds)
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:  # data parallel: every rank must end with the same adapter
        line = f"rank {accelerator.process_index}: adapter checksum {adapter_checksum(trainer.model):.6f}\n"
        sys.stdout.write(line)  # one write, so two ranks' lines cannot interleave mid-line
        sys.stdout.flush()
    if accelerator.is_main_process:
        save_adapter_atomically(trainer.model, tokenizer, config.adapter_dir, record)
        print(f"Saved {config.persona_name} adapter to {config.adapter_dir} "
              f"({trainer.state.global_step} steps, {seconds:.0f} s)")
    accelerator.wait_for_everyone()
    return config.adapter_dir


def training_record(config: TrainConfig, profile, trainer, conversations, seconds: float) -> dict:
    """persona.json: enough to reproduce the adapter, and to use it the way it was trained."""
    state = trainer.state
    return {
        "persona": config.persona_name,
        "system_prompt": system_prompt_of(conversations),
        "base_model": config.model_id,
        "hardware": profile.name,
        "precision": profile.precision,
        "quantized": bool(getattr(trainer.model, "is_loaded_in_4bit", False)),
        "settings": asdict(config),
        "train_examples": trainer.split["train"],
        "replay_examples": trainer.split["replay"],
        "eval_examples": trainer.split["eval"],
        "global_steps": state.global_step,
        "best_checkpoint": Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None,
        "best_eval_loss": min((e["eval_loss"] for e in state.log_history if "eval_loss" in e), default=None),
        "train_seconds": round(seconds, 1),
        "loss_history": loss_history(state.log_history),
    }


def adapter_checksum(model) -> float:
    """A number that changes with any LoRA weight: the sum of |w| over the trainable parameters."""
    return float(sum(p.detach().float().abs().sum() for p in model.parameters() if p.requires_grad))
