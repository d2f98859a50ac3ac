"""Choose the training recipe by measurement: train one persona several ways, score each adapter on held-out data.

Every recipe is the series' TrainConfig with a few changes (BEST: keep the checkpoint with the lowest eval loss
instead of the last). The score: style accuracy (the judge), held-out NLL against the base, forgetting (KL on neutral
questions, general-text perplexity), loops, and the training time. What a persona keeps beyond the defaults goes to
persona_data/recipes.json (utils.training.persona_recipe).
"""
import json
import shutil
import time
from pathlib import Path

from .data import DATA_DIR
from .training import TrainConfig

BEST = {"keep_best": True}
RECIPES = {
    "old default: lr 3e-4, 3 epochs": {"learning_rate": 3e-4, "num_train_epochs": 3, **BEST},
    "lr 1e-3, 2 epochs": {"learning_rate": 1e-3, "num_train_epochs": 2, **BEST},
    "lr 2e-3, 2 epochs": {"learning_rate": 2e-3, "num_train_epochs": 2, **BEST},
    "lr 2e-3, 2 epochs, last not best": {"learning_rate": 2e-3, "num_train_epochs": 2},  # the series' default
    "lr 2e-3, 2 epochs, last not best, seed 1": {"learning_rate": 2e-3, "num_train_epochs": 2, "seed": 1},
    "lr 2e-3, 3 epochs, last not best": {"learning_rate": 2e-3, "num_train_epochs": 3},
    "lr 2e-3, 2 epochs, NEFTune 5, last not best": {"learning_rate": 2e-3, "num_train_epochs": 2,
                                                    "neftune_noise_alpha": 5.0},
    "lr 1e-3, 2 epochs, NEFTune 5, last not best": {"learning_rate": 1e-3, "num_train_epochs": 2,
                                                    "neftune_noise_alpha": 5.0},
    "lr 1.5e-3, 2 epochs, NEFTune 5, last not best": {"learning_rate": 1.5e-3, "num_train_epochs": 2,
                                                      "neftune_noise_alpha": 5.0},
    "lr 1e-3, 2 epochs, NEFTune 10, last not best": {"learning_rate": 1e-3, "num_train_epochs": 2,
                                                     "neftune_noise_alpha": 10.0},
    "lr 2e-3, 2 epochs, r 8 alpha 16, last not best": {"learning_rate": 2e-3, "num_train_epochs": 2, "lora_r": 8,
                                                        "lora_alpha": 16},
    "lr 2e-3, 2 epochs, batch 4, last not best": {"learning_rate": 2e-3, "num_train_epochs": 2,
                                                  "per_device_train_batch_size": 4},
    "lr 3e-3, 2 epochs, last not best": {"learning_rate": 3e-3, "num_train_epochs": 2},
    "lr 2e-3, 2 epochs, NEFTune 5, attention only, last not best": {"learning_rate": 2e-3, "num_train_epochs": 2,
                                                                    "neftune_noise_alpha": 5.0,
                                                                    "lora_targets": "attention"},
    "lr 2e-3, 2 epochs, lora_dropout 0.1, last not best": {"learning_rate": 2e-3, "num_train_epochs": 2,
                                                           "lora_dropout": 0.1},
    "lr 2e-3, 2 epochs, DFT loss, last not best": {"learning_rate": 2e-3, "num_train_epochs": 2, "loss_type": "dft"},
    "lr 4e-3, 2 epochs, DFT loss, last not best": {"learning_rate": 4e-3, "num_train_epochs": 2, "loss_type": "dft"},
    "lr 2e-3, 3 epochs, replay 0.25, last not best": {"learning_rate": 2e-3, "num_train_epochs": 3,
                                                      "replay_fraction": 0.25},
    "lr 2e-3, 2 epochs, replay 0.25, last not best": {"learning_rate": 2e-3, "num_train_epochs": 2,
                                                      "replay_fraction": 0.25},
    "lr 1e-3, 3 epochs": {"learning_rate": 1e-3, "num_train_epochs": 3, **BEST},
    "lr 1e-3, 2 epochs, last not best": {"learning_rate": 1e-3, "num_train_epochs": 2},
    "lr 1e-3, 2 epochs, r 32 alpha 64": {"learning_rate": 1e-3, "num_train_epochs": 2, "lora_r": 32, "lora_alpha": 64,
                                         **BEST},
    "lr 1e-3, 2 epochs, NEFTune 5": {"learning_rate": 1e-3, "num_train_epochs": 2, "neftune_noise_alpha": 5.0, **BEST},
    "lr 1e-3, 2 epochs, full-sequence loss": {"learning_rate": 1e-3, "num_train_epochs": 2,
                                              "full_sequence_loss": True, **BEST},
    "lr 1e-3, 2 epochs, 4-bit base": {"learning_rate": 1e-3, "num_train_epochs": 2, "use_quantization": True, **BEST},
    "lr 5e-4, 2 epochs, rsLoRA": {"learning_rate": 5e-4, "num_train_epochs": 2, "use_rslora": True, **BEST},
    "lr 1e-3, 1 epoch": {"learning_rate": 1e-3, "num_train_epochs": 1, **BEST},
    "lr 2e-3, 1 epoch": {"learning_rate": 2e-3, "num_train_epochs": 1, **BEST},
    "lr 2e-3, 1 epoch, 4-bit base": {"learning_rate": 2e-3, "num_train_epochs": 1, "use_quantization": True, **BEST},
}


def check_sweep(persona: str, labels):
    from .errors import FlagError

    unknown = [label for label in labels or [] if label not in RECIPES]
    if unknown:
        raise FlagError(f"--recipes: unknown {unknown}; choose from {list(RECIPES)}")
    if not (DATA_DIR / f"{persona}.jsonl").exists():
        raise FlagError(f"--persona {persona}: no persona_data/{persona}.jsonl")


def recipe_config(changes: dict, persona: str, out_dir, model_id: str = "embedded") -> TrainConfig:
    return TrainConfig(dataset_path=str(DATA_DIR / f"{persona}.jsonl"), persona_name=persona, model_id=model_id,
                       output_dir=str(out_dir), overwrite=True, **changes)


def score(adapter_dir, classifier, max_prompts: int | None, max_new_tokens: int) -> dict:
    """The adapter's style, NLL, forgetting and loops on its persona's held-out prompts."""
    from .evaluate import evaluate_persona, forgetting
    from .likelihood import perplexity
    from .loading import load_personas

    personas = load_personas(adapter_dir)
    name, system_prompt = next(iter(personas.system_prompts.items()))
    general = (DATA_DIR / "eval" / "general_text.txt").read_text(encoding="utf-8")
    metrics, _ = evaluate_persona(personas.model, personas.tokenizer, classifier, name, system_prompt,
                                  max_prompts=max_prompts, max_new_tokens=max_new_tokens, systems=("adapter",))
    metrics |= forgetting(personas.model, personas.tokenizer, name, general, max_prompts=max_prompts)
    metrics["ppl_general_base"] = perplexity(personas.model, personas.tokenizer, general, "base")
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def run_sweep(persona: str, labels=None, out_dir="build/sweep", profile=None, max_prompts: int | None = 24,
              max_new_tokens: int = 96, seeds=None, progress=None, on_row=None) -> list[dict]:
    """Train and score each recipe in turn, once per seed (none given: its own seed); one row per training run, handed
    to `on_row` as soon as it is measured. A loop rate from one run is one draw: several seeds show its spread."""
    from .adapters import read_record
    from .judge import train_style_classifier
    from .training import train_persona

    classifier = train_style_classifier()
    rows = []
    runs = [(label, seed) for label in labels or RECIPES for seed in seeds or (None,)]
    for label, seed in runs:
        changes = RECIPES[label] | ({"seed": seed} if seed is not None else {})
        config = recipe_config(changes, persona, Path(out_dir) / "adapters")
        start = time.perf_counter()
        adapter = train_persona(config, profile)
        seconds = time.perf_counter() - start
        record = read_record(adapter)
        row = {"recipe": label, "seed": config.seed, "train_seconds": round(seconds),
               "steps": record["global_steps"], "kept": record["best_checkpoint"] or "last",
               **score(adapter, classifier, max_prompts, max_new_tokens)}
        rows.append(row)
        if on_row:
            on_row(rows)
        if progress:
            progress(f"{label}, seed {config.seed}: style {row['style_accuracy_adapter']:.2f}, "
                     f"NLL {row['nll_adapter']:.3f} (base {row['nll_base']:.3f}), {seconds:.0f} s")
        shutil.rmtree(config.checkpoint_dir, ignore_errors=True)
    return rows


def save_sweep(rows: list[dict], persona: str, path, settings: dict):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"persona": persona, "settings": settings, "recipes": rows}, indent=2) + "\n")


def sweep_table(rows: list[dict]):
    """The sweep as a pandas table, one row per recipe: the means over its seeds of the columns that decide a recipe,
    and the loop rate's lowest and highest run."""
    import pandas as pd

    table = pd.DataFrame(rows)
    table["NLL vs base"] = table["nll_adapter"] / table["nll_base"] - 1
    table["ppl vs base"] = table["ppl_general_adapter"] / table["ppl_general_base"] - 1
    runs = table.groupby("recipe", sort=False)
    means = runs[["style_accuracy_adapter", "NLL vs base", "kl_neutral", "ppl vs base", "repetition_rate_adapter",
                  "ended_rate_adapter", "steps", "train_seconds"]].mean()
    loops = runs["repetition_rate_adapter"]
    return means.assign(loops_min=loops.min(), loops_max=loops.max(), runs=runs.size(), kept=runs["kept"].first())
