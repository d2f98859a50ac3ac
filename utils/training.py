"""Train a persona LoRA adapter with trl's SFTTrainer; save it safely, with a record of how it was made."""
import contextlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .data import DataError, Problem, load_conversations, system_prompt_of, tokenize_with_assistant_mask

RECORD_FILE = "persona.json"


@dataclass
class TrainConfig:
    dataset_path: str
    persona_name: str
    model_id: str = "embedded"
    output_dir: str = "trained_adapters"
    max_seq_length: int = 512
    use_quantization: bool = False
    use_bf16: bool | None = None
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # dropout on CPU costs ~2.5 s of a 13 s step here (measured); pass 0.05 to use it
    eval_fraction: float = 0.1
    save_steps: int = 50
    save_total_limit: int = 2
    gradient_checkpointing: bool = False
    seed: int = 42
    overwrite: bool = False
    resume: bool = False
    allow_unquantized: bool = False

    @property
    def adapter_dir(self) -> Path:
        return Path(self.output_dir) / f"{self.persona_name}_final_adapter"

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / f"{self.persona_name}_checkpoints"


class AdapterExistsError(FileExistsError):
    pass


class TrainingError(RuntimeError):
    pass


def check_can_write(config: TrainConfig):
    """Refuse to replace an existing adapter unless --overwrite: a learner's trained work is never lost silently."""
    if config.adapter_dir.exists() and not config.overwrite:
        raise AdapterExistsError(
            f"{config.adapter_dir} already exists. Pass --overwrite to replace it, or keep both by choosing another "
            f"--persona_name (e.g. {config.persona_name}_v2) or --output_dir."
        )


def check_masks(tokenizer, conversations, path, max_seq_length):
    """Every conversation must keep at least one assistant token after truncation, or it teaches nothing."""
    problems = []
    for conversation in conversations:
        mask = tokenize_with_assistant_mask(tokenizer, conversation["messages"])["assistant_masks"][:max_seq_length]
        if not any(mask):
            first_user = next(m["content"] for m in conversation["messages"] if m["role"] == "user")
            problems.append(Problem(str(path), conversation["line"], "messages",
                                    f"conversation starting {first_user[:40]!r}: "
                                    f"no assistant tokens left to learn within --max_seq_length {max_seq_length} "
                                    "(template mismatch, or truncation cut off the reply); shorten the conversation "
                                    "or raise --max_seq_length"))
    if problems:
        raise DataError(problems)


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def sft_config(config: TrainConfig, profile, has_eval: bool):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(config.checkpoint_dir),
        max_length=config.max_seq_length,
        assistant_only_loss=True,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        bf16=profile.bf16,
        fp16=profile.fp16,
        use_cpu=profile.device == "cpu",
        activation_checkpointing=config.gradient_checkpointing,
        train_sampling_strategy="group_by_length",
        ddp_find_unused_parameters=False,
        logging_steps=1,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        dataset_num_proc=None,
        disable_tqdm=False,
    )


def fast_attention(model, profile):
    """Eager attention on a CPU: for persona-length sequences it beats sdpa there (`python -m utils bench --sweep`).
    GPUs keep sdpa."""
    if profile.device == "cpu":
        model.set_attn_implementation("eager")
    return model


@contextlib.contextmanager
def lm_head_positions(which: str = "trained"):
    """Which positions trl's fused LM head scores: the "trained" ones only, or "every" one (masked ones give 0).

    trl scores only the trained positions on Triton GPUs and every position elsewhere, to keep shapes fixed for
    compilers. A CPU compiles nothing, and each masked position (system prompt, user turns: most of a persona
    conversation) costs a vocabulary-sized matmul: the same loss, ~25% slower. trl.trainer.utils asks
    `_use_triton` only for this choice (its kernels keep their own copy), so swapping it there changes nothing else.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:  # a newer trl decides differently: keep its choice (tests/test_reliability.py flags it)
        yield
        return
    trl_utils._use_triton = lambda device: which == "trained"
    try:
        yield
    finally:
        trl_utils._use_triton = original


def split_train_eval(conversations, eval_fraction, seed):
    import random

    shuffled = conversations[:]
    random.Random(seed).shuffle(shuffled)
    n_eval = int(len(shuffled) * eval_fraction)
    return shuffled[n_eval:], shuffled[:n_eval]


def save_adapter_atomically(model, tokenizer, target: Path, record: dict):
    """Write to a temporary folder, then rename: a crash never leaves a half-written adapter behind."""
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


def last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint that finished writing (the trainer writes trainer_state.json last)."""
    done = [c for c in checkpoint_dir.glob("checkpoint-*") if (c / "trainer_state.json").exists()]
    return max(done, key=lambda c: int(c.name.split("-")[1]), default=None)


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
    from datasets import Dataset
    from peft import prepare_model_for_kbit_training
    from trl import SFTTrainer

    from .data import training_chat_template
    from .hardware import detect_hardware, resolve_precision
    from .models import load_base_model, load_tokenizer

    check_can_write(config)
    conversations = load_conversations(config.dataset_path, persona=config.persona_name)  # before any model loads
    profile = resolve_precision(profile or detect_hardware(), config.use_bf16)
    quantize = config.use_quantization
    if quantize and not profile.can_quantize:
        message = "bitsandbytes 4-bit is not available on this machine"
        if not config.allow_unquantized:
            raise TrainingError(message + "; drop --use_quantization (or pass --allow_unquantized) to train unquantized.")
        print(message + ": continuing unquantized, as --allow_unquantized allows.")
        quantize = False

    tokenizer = tokenizer or load_tokenizer(config.model_id)
    check_masks(tokenizer, conversations, config.dataset_path, config.max_seq_length)
    tokenizer.chat_template = training_chat_template(tokenizer)
    train, held_out = split_train_eval(conversations, config.eval_fraction, config.seed)

    model = model or load_base_model(config.model_id, profile, quantize=quantize, dtype=profile.compute_dtype)
    if quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    fast_attention(model, profile)

    as_dataset = lambda rows: Dataset.from_list([{"messages": r["messages"]} for r in rows])  # noqa: E731
    trainer = SFTTrainer(
        model=model,
        args=sft_config(config, profile, has_eval=bool(held_out)),
        train_dataset=as_dataset(train),
        eval_dataset=as_dataset(held_out) if held_out else None,
        processing_class=tokenizer,
        peft_config=lora_config(config),
    )
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

    record = {
        "persona": config.persona_name,
        "system_prompt": system_prompt_of(conversations),
        "base_model": config.model_id,
        "hardware": profile.name,
        "precision": profile.precision,
        "quantized": quantize,
        "settings": asdict(config),
        "train_examples": len(train),
        "eval_examples": len(held_out),
        "global_steps": trainer.state.global_step,
        "train_seconds": round(seconds, 1),
        "loss_history": loss_history(trainer.state.log_history),
    }
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


def adapter_checksum(model) -> float:
    """A number that changes with any LoRA weight: the sum of |w| over the trainable parameters."""
    return float(sum(p.detach().float().abs().sum() for p in model.parameters() if p.requires_grad))


def read_record(adapter_dir) -> dict:
    path = Path(adapter_dir) / RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else {}
