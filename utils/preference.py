"""Preference tuning with DPO on top of a persona's SFT adapter: the pairs, the one DPO trainer assembly, training.

Pairs: for a training prompt, chosen = the persona's own reply, rejected = either the base model's reply to the
same prompt under the same system prompt — the plain register to push away from — or the SFT adapter's own greedy
reply where it loops ("own_loops": the repetition to push away from); generated once and cached.

Reference policy: the SFT adapter itself, frozen. Given a PeftModel that already carries an adapter, trl copies it
as a second adapter named "ref" on the same base (a few MB), and computes the reference log-probabilities with
that one active: no second model is loaded. (The base with the adapter disabled would be the other choice, but it
would pull the policy back toward the plain register DPO is meant to push away from.)
"""
import copy
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .adapters import (check_adapter, check_can_write, checkpoints_dir, final_adapter_dir, last_complete_checkpoint,
                       read_record, save_adapter_atomically)
from .data import DataError, Problem, load_conversations, read_records
from .errors import FlagError
from .hardware import with_precision

ROOT = Path(__file__).resolve().parents[1]
PAIRS_DIR = ROOT / "build" / "preference"


@dataclass
class PreferConfig:
    adapter_path: str                     # the SFT adapter to start from (and to use, frozen, as the reference)
    output_dir: str = "trained_adapters/dpo"
    pairs_path: str = ""                  # "": build/preference/<persona>_pairs.jsonl, generated when missing
    max_pairs: int = 96                   # pairs generated from the persona's training prompts
    beta: float = 0.1
    learning_rate: float = 5e-5
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    max_length: int = 384
    max_new_tokens: int = 96              # length of the generated (rejected) replies
    rejected: str = "base"                # whose replies are rejected: "base" or "own_loops" (REJECTED)
    precision: str = "auto"
    seed: int = 42
    overwrite: bool = False
    resume: bool = False

    @property
    def record(self) -> dict:
        return read_record(self.adapter_path)

    @property
    def persona(self) -> str:
        return self.record.get("persona") or Path(self.adapter_path).name

    @property
    def adapter_dir(self) -> Path:
        return final_adapter_dir(self.output_dir, self.persona)

    @property
    def checkpoint_dir(self) -> Path:
        return checkpoints_dir(self.output_dir, self.persona)

    @property
    def pairs_file(self) -> Path:
        if self.pairs_path:
            return Path(self.pairs_path)
        return PAIRS_DIR / (f"{self.persona}_pairs.jsonl" if self.rejected == "base" else
                            f"{self.persona}_{self.rejected}_pairs.jsonl")


RANGES = {"beta": (lambda v: v > 0, "a number > 0, e.g. 0.1"), "learning_rate": (lambda v: 0 < v < 1, "in (0, 1)"),
          "max_pairs": (lambda v: v >= 2, "an integer >= 2"), "num_train_epochs": (lambda v: v > 0, "a number > 0"),
          "per_device_train_batch_size": (lambda v: v >= 1, "an integer >= 1"),
          "max_length": (lambda v: v >= 32, "an integer >= 32"), "max_new_tokens": (lambda v: v >= 1, ">= 1"),
          "rejected": (lambda v: v in REJECTED, "base or own_loops")}


def check_prefer_config(config: PreferConfig):
    check_adapter(config.adapter_path)
    for name, (allowed, description) in RANGES.items():
        if not allowed(getattr(config, name)):
            raise FlagError(f"--{name} {getattr(config, name)!r} is out of range: use {description}")


# --- pairs ------------------------------------------------------------------------------------------------------

def pair(prompt: list[dict], chosen: str, rejected: str) -> dict:
    """trl's conversational preference format."""
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def prompts_and_replies(conversations, max_pairs: int, seed: int) -> list[tuple[list[dict], str]]:
    """(everything up to the last user turn, the persona's reply to it) for a seeded sample of conversations."""
    sample = conversations[:]
    random.Random(seed).shuffle(sample)
    return [(c["messages"][:-1], c["messages"][-1]["content"]) for c in sample[:max_pairs]]


def base_pairs(model, tokenizer, conversations, max_pairs: int, seed: int, max_new_tokens: int) -> list[dict]:
    """chosen = the persona's reply; rejected = the base model's greedy reply (adapter off), same system prompt."""
    from .evaluate import generate
    from .inference import BASE

    examples = prompts_and_replies(conversations, max_pairs, seed)
    rejected, _ = generate(model, tokenizer, BASE, [p for p, _ in examples], max_new_tokens)
    return [pair(p, chosen, base) for (p, chosen), base in zip(examples, rejected) if base and base != chosen]


def own_loop_pairs(model, tokenizer, conversations, max_pairs: int, seed: int, max_new_tokens: int) -> list[dict]:
    """chosen = the persona's reply; rejected = the SFT adapter's own greedy reply to the same prompt, for the
    prompts where that reply loops (utils.evaluate.loops): every training prompt is asked, the loops are kept."""
    from .evaluate import generate, loops

    examples = prompts_and_replies(conversations, len(conversations), seed)
    replies, _ = generate(model, tokenizer, model.active_adapter, [p for p, _ in examples], max_new_tokens)
    return [pair(p, chosen, own) for (p, chosen), own in zip(examples, replies) if loops(own)][:max_pairs]


REJECTED = {"base": base_pairs, "own_loops": own_loop_pairs}


def validate_pairs(path) -> list[Problem]:
    """Every problem in a pairs file, as `file:line: field: message` (like persona data)."""
    records, problems = read_records(path)
    for number, record in records:
        where = (str(path), number)
        prompt = record.get("prompt")
        if not isinstance(prompt, list) or not prompt or not isinstance(prompt[-1], dict) \
                or prompt[-1].get("role") != "user":
            problems.append(Problem(*where, "prompt", "must be a list of messages ending with the user's turn"))
        for field in ("chosen", "rejected"):
            reply = record.get(field)
            if not (isinstance(reply, list) and len(reply) == 1 and isinstance(reply[0], dict)
                    and reply[0].get("role") == "assistant" and str(reply[0].get("content", "")).strip()):
                problems.append(Problem(*where, field, "must be [{\"role\": \"assistant\", \"content\": \"...\"}]"))
        if record.get("chosen") == record.get("rejected"):
            problems.append(Problem(*where, "rejected", "is the same reply as chosen: nothing to prefer"))
    return problems


def load_pairs(path) -> list[dict]:
    problems = validate_pairs(path)
    if problems:
        raise DataError(problems)
    return [record for _, record in read_records(path)[0]]


def feedback_pairs(path, persona: str) -> list[dict]:
    """Pairs from the chat's thumbs (utils.chat.PersonaChat.rate): every good reply against every bad reply that
    the same persona gave to the same conversation."""
    replies = {}
    for _, record in read_records(path)[0]:
        if record.get("persona") == persona:
            key = json.dumps(record["prompt"], sort_keys=True)
            replies.setdefault(key, {True: [], False: []})[bool(record["good"])].append(record["reply"])
    return [pair(json.loads(key), chosen, rejected) for key, rated in replies.items()
            for chosen in rated[True] for rejected in rated[False] if chosen != rejected]


def save_pairs(pairs: list[dict], path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")


def cached_pairs(config: PreferConfig, model, tokenizer) -> list[dict]:
    """The pairs file if it exists (validated), else generated once from the persona's training data and saved."""
    if config.pairs_file.exists():
        return load_pairs(config.pairs_file)
    record = config.record
    conversations = load_conversations(record["settings"]["dataset_path"], persona=record["persona"])
    pairs = REJECTED[config.rejected](model, tokenizer, conversations, config.max_pairs, config.seed,
                                      config.max_new_tokens)
    save_pairs(pairs, config.pairs_file)
    return pairs


# --- training -----------------------------------------------------------------------------------------------------

def dpo_config(config: PreferConfig, profile):
    from trl import DPOConfig

    return DPOConfig(output_dir=str(config.checkpoint_dir), beta=config.beta, learning_rate=config.learning_rate,
                     num_train_epochs=config.num_train_epochs, max_steps=config.max_steps,
                     per_device_train_batch_size=config.per_device_train_batch_size, max_length=config.max_length,
                     lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=1, save_strategy="epoch",
                     save_total_limit=1, bf16=profile.bf16, fp16=profile.fp16, use_cpu=profile.device == "cpu",
                     report_to="none", seed=config.seed, disable_tqdm=False)


def load_policy(config: PreferConfig, profile):
    """The SFT adapter, trainable, on its base (4-bit if it was trained that way): the policy DPO starts from."""
    from peft import PeftModel

    from .models import load_base_model, load_tokenizer
    from .training import fast_attention

    record = config.record
    quantize = bool(record.get("quantized")) and profile.can_quantize
    base = load_base_model(record.get("base_model", "embedded"), profile, quantize=quantize,
                           dtype=profile.compute_dtype)
    model = PeftModel.from_pretrained(base, config.adapter_path, is_trainable=True)
    return fast_attention(model, profile), load_tokenizer(record.get("base_model", "embedded"))


def build_dpo_trainer(config: PreferConfig, profile, pairs: list[dict], model, tokenizer, callbacks=()):
    """DPOTrainer on the SFT adapter, the frozen copy of it as reference; LoRA weights kept in fp32 (as in SFT)."""
    from datasets import Dataset
    from trl import DPOTrainer

    from .masking import training_chat_template
    from .training import keep_adapters_in_fp32

    trainer_tokenizer = copy.deepcopy(tokenizer)
    trainer_tokenizer.chat_template = training_chat_template(tokenizer)
    trainer = DPOTrainer(model=model, ref_model=None, args=dpo_config(config, profile),
                         train_dataset=Dataset.from_list(pairs), processing_class=trainer_tokenizer,
                         callbacks=list(callbacks))
    keep_adapters_in_fp32(trainer.model)
    return trainer


def prefer_persona(config: PreferConfig, profile=None) -> Path:
    """Tune one persona's SFT adapter with DPO; returns the folder the new adapter was saved to."""
    from .hardware import detect_hardware
    from .progress import progress_callbacks

    check_prefer_config(config)
    check_can_write(config.adapter_dir, config.overwrite, config.persona)
    if config.pairs_file.exists():
        load_pairs(config.pairs_file)  # bad pairs fail before any model loads
    profile = with_precision(profile or detect_hardware(), config.precision)
    model, tokenizer = load_policy(config, profile)
    pairs = cached_pairs(config, model, tokenizer)
    trainer = build_dpo_trainer(config, profile, pairs, model, tokenizer, progress_callbacks(f"{config.persona} (DPO)"))
    resume_from = last_complete_checkpoint(config.checkpoint_dir) if config.resume else None
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return save_dpo_adapter(config, trainer, tokenizer, len(pairs), time.perf_counter() - start)


def save_dpo_adapter(config: PreferConfig, trainer, tokenizer, n_pairs: int, seconds: float) -> Path:
    """The tuned adapter, saved like an SFT one (atomically, tokenizer with the base template), with a record of the
    SFT adapter it started from, the settings and the pairs; the frozen reference copy is not part of it."""
    record = config.record | {
        "method": "dpo", "sft_adapter": str(Path(config.adapter_path).resolve()), "dpo_settings": asdict(config),
        "pairs": n_pairs, "pairs_file": str(config.pairs_file), "dpo_steps": trainer.state.global_step,
        "dpo_seconds": round(seconds, 1), "dpo_log": [e for e in trainer.state.log_history if "loss" in e]}
    if "ref" in trainer.model.peft_config:
        trainer.model.delete_adapter("ref")
    trainer.model.set_adapter("default")
    save_adapter_atomically(trainer.model, tokenizer, config.adapter_dir, record)
    return config.adapter_dir


