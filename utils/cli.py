"""`python -m utils <command>`: the series from the shell, with the same code the notebooks use.

All argument parsing and printing live here; every other module returns values or raises a PersonaLoraError,
whose one-line message is printed once, below, without a traceback.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

from .errors import FlagError, PersonaLoraError
from .gguf_export import GGUF_TYPES
from .hardware import PRECISIONS
from .training import TrainConfig


def add_train_arguments(parser):
    defaults = TrainConfig(dataset_path="", persona_name="")
    parser.add_argument("--dataset_path", required=True)
    parser.add_argument("--persona_name", required=True, help="picks this persona's rows from a mixed file")
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("dataset_path", "persona_name", "precision"):
            continue
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(f"--{field.name}", action="store_true")
        else:
            parser.add_argument(f"--{field.name}", type=type(default), default=default)
    add_precision_arguments(parser)


def add_precision_arguments(parser):
    parser.add_argument("--precision", choices=["auto", *PRECISIONS], default=None,
                        help="training/inference precision (default: auto, from the hardware)")
    parser.add_argument("--use_bf16", action="store_true", help="the seed projects' name for --precision bf16")


def add_chat_arguments(parser):
    parser.add_argument("--model_id", default=None, help="default: the base the adapter was trained on")
    parser.add_argument("--adapter_path")
    parser.add_argument("--prompt", help="print one reply and exit (without it: an interactive loop)")
    parser.add_argument("--system_prompt", help="override the persona's system prompt recorded with the adapter")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=0.9)
    parser.add_argument("--repetition_penalty", type=float, default=1.1)
    parser.add_argument("--merge_adapter", action="store_true", help="merge the adapter into an unquantized base")
    parser.add_argument("--use_quantization", action="store_true")
    add_precision_arguments(parser)


def add_ship_arguments(parser, merge: bool):
    parser.add_argument("--adapter_path", required=True, help="a *_final_adapter folder from training")
    parser.add_argument("--out", required=True, help="the folder to write (and to upload with --push_to_hub)")
    if merge:
        parser.add_argument("--gguf", action="append", choices=GGUF_TYPES, default=[],
                            help="also write <out>/gguf/<persona>-<type>.gguf for llama.cpp (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="write over files already in --out")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the folder to this private hub repo")


def add_bench_arguments(parser):
    from .random_models import ARCHITECTURES

    parser.add_argument("--quick", action="store_true", help="2 steps of batch 2: a smoke test (~1-2 min on 2 cores)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--batch_size", type=int, default=TrainConfig.per_device_train_batch_size)
    parser.add_argument("--model_config", default="embedded", choices=["embedded", *ARCHITECTURES],
                        help="embedded, or random weights in a known shape (no download)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: a CUDA GPU if there is one")
    parser.add_argument("--use_quantization", action="store_true", help="4-bit NF4 base in both runs (QLoRA)")
    parser.add_argument("--sweep", action="store_true", help="also one change at a time from ours (notebook 07)")
    add_precision_arguments(parser)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m utils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(commands.add_parser("train", help="train a persona LoRA adapter"))
    add_chat_arguments(commands.add_parser("chat", help="talk to a persona"))
    validate = commands.add_parser("validate", help="check persona data files")
    validate.add_argument("paths", nargs="+")
    validate.add_argument("--max_seq_length", type=int, default=None,
                          help="also warn about conversations longer than this after templating")
    validate.add_argument("--model_id", default="embedded", help="tokenizer used for --max_seq_length")
    add_ship_arguments(commands.add_parser("package", help="package an adapter with a model card"), merge=False)
    add_ship_arguments(commands.add_parser("merge", help="merge an adapter into one model (+GGUF)"), merge=True)
    add_bench_arguments(commands.add_parser("bench", help="training speed and memory: seed-style vs the series' path"))
    evaluate = commands.add_parser("evaluate", help="persona-adherence metrics of trained adapters, as JSON")
    evaluate.add_argument("--adapters_dir", default="trained_adapters")
    evaluate.add_argument("--out", default="figures/persona_metrics.json")
    evaluate.add_argument("--max_prompts", type=int, default=None, help="eval prompts per persona (default: all)")
    evaluate.add_argument("--max_new_tokens", type=int, default=128)
    sweep = commands.add_parser("sweep", help="train one persona with several recipes, score each (notebook 06)")
    sweep.add_argument("--persona", default="professor_snugglesworth")
    sweep.add_argument("--recipes", nargs="*", help="labels of utils.sweep.RECIPES (default: all)")
    sweep.add_argument("--out", default="figures/recipe_sweep.json")
    sweep.add_argument("--max_prompts", type=int, default=24)
    sweep.add_argument("--max_new_tokens", type=int, default=96)
    return parser


def precision_of(args) -> str:
    """--precision, or bf16 for the seed projects' --use_bf16; "auto" when neither is given."""
    if args.use_bf16 and args.precision not in (None, "bf16"):
        raise FlagError(f"--use_bf16 contradicts --precision {args.precision}: give one of them")
    return args.precision or ("bf16" if args.use_bf16 else "auto")


def at_least(flag: str, value, minimum):
    if value is not None and value < minimum:
        raise FlagError(f"{flag} {value} is out of range: use a number >= {minimum}")


def run_train(args):
    from .training import train_persona

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "precision"}
    train_persona(TrainConfig(**values, precision=precision_of(args)))


def run_validate(args):
    from .data import validate_file

    tokenizer = None
    if args.max_seq_length:
        at_least("--max_seq_length", args.max_seq_length, 1)
        from .models import load_tokenizer

        tokenizer = load_tokenizer(args.model_id)
    problems = [p for path in args.paths for p in validate_file(path, tokenizer, args.max_seq_length)]
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    print(f"{len(args.paths)} file(s) checked: {errors} error(s), {len(problems) - errors} warning(s)", file=sys.stderr)
    return 1 if errors else 0


def run_chat(args):
    from .hardware import detect_hardware, with_precision
    from .inference import check_sampling, stream_reply, with_system_prompt
    from .loading import adapter_folders, load_personas

    sampling = dict(temperature=args.temperature, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                    max_new_tokens=args.max_new_tokens)
    check_sampling(**sampling)
    profile = with_precision(detect_hardware(), precision_of(args))  # checked before any model loads
    dtype = None if precision_of(args) == "auto" else profile.compute_dtype
    if args.use_quantization and args.merge_adapter:
        print("--merge_adapter merges into an unquantized base (merging into 4-bit weights loses quality).")
    if args.adapter_path:
        adapter_folders(args.adapter_path)  # a folder with no adapter fails here, not in peft
        personas = load_personas(args.adapter_path, args.model_id, profile, args.use_quantization, dtype,
                                 merge=args.merge_adapter)
        model, tokenizer = personas.model, personas.tokenizer
        system_prompt = args.system_prompt or next(iter(personas.system_prompts.values()))
    else:
        from .models import load_base_model, load_tokenizer

        model_id = args.model_id or "embedded"
        tokenizer = load_tokenizer(model_id)
        model = load_base_model(model_id, profile, quantize=args.use_quantization, dtype=dtype)
        system_prompt = args.system_prompt
    history = []
    prompts = [args.prompt] if args.prompt else None
    while True:
        text = prompts.pop(0) if prompts is not None else input("you> ").strip()
        if prompts is None and text in ("", "exit", "quit"):
            if text:
                return 0
            continue
        history.append({"role": "user", "content": text})
        pieces = []
        print("persona> " if prompts is None else "", end="", flush=True)
        for piece in stream_reply(model, tokenizer, with_system_prompt(history, system_prompt), **sampling):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
        if prompts is not None:
            return 0


def ship(folder: Path, repo_id: str | None):
    from .hub import file_sizes, push_to_hub

    for name, size in file_sizes(folder).items():
        print(f"{size / 2**20:9.1f} MiB  {name}")
    print(f"written to {folder}")
    if repo_id:
        print("pushed to", push_to_hub(folder, repo_id))


def run_package(args):
    from .export import package_adapter

    ship(package_adapter(args.adapter_path, args.out, repo_id=args.push_to_hub, overwrite=args.overwrite),
         args.push_to_hub)


def run_merge(args):
    from .export import merge_adapter

    ship(merge_adapter(args.adapter_path, args.out, gguf_types=args.gguf, repo_id=args.push_to_hub,
                       overwrite=args.overwrite), args.push_to_hub)


def run_bench(args):
    from . import bench
    from .hardware import describe, detect_hardware, with_precision
    from .measure import measure_peaks
    from .models import load_tokenizer
    from .random_models import random_checkpoint

    at_least("--steps", args.steps, 1)
    at_least("--batch_size", args.batch_size, 1)
    profile = detect_hardware(cuda=args.device == "cuda" if args.device else None)
    precision = precision_of(args)
    with_precision(profile, precision)  # an impossible precision fails before any model loads
    bench.quiet_libraries()
    print(describe(profile))
    steps, batch_size = (2, 2) if args.quick else (args.steps, args.batch_size)
    model_id = "embedded" if args.model_config == "embedded" else str(random_checkpoint(args.model_config))
    tokenizer = load_tokenizer("embedded")
    peaks = measure_peaks(profile.device)
    results = []
    for setting in bench.comparison(args.use_quantization, None if precision == "auto" else precision, args.sweep):
        print(f"... {setting.label}", flush=True)
        results.append(bench.run_setting(setting, profile, tokenizer, peaks, model_id, steps, batch_size))
    peaks = measure_peaks(profile.device, earlier=peaks)
    bench.rescore_mfu(results, peaks)
    print(bench.format_table(results, peaks, profile.device))
    print(bench.summary_line(results[1], results[0]))
    return 0


def run_evaluate(args):
    from .evaluate import evaluate_adapters, metrics_table

    at_least("--max_prompts", args.max_prompts, 1)
    at_least("--max_new_tokens", args.max_new_tokens, 1)
    report = evaluate_adapters(args.adapters_dir, args.out, max_prompts=args.max_prompts,
                               max_new_tokens=args.max_new_tokens)
    print(metrics_table(report).round(3).to_string())
    print(f"style classifier on held-out references: {report['classifier_accuracy_on_references']:.3f}")
    for name, checks in report["targets"].items():
        print(f"{name}: " + ", ".join(f"{target} {'yes' if held else 'NO'}" for target, held in checks.items()))
    print(f"wrote {args.out} in {report['settings']['seconds']:.0f} s")
    return 0


def run_sweep(args):
    from .sweep import RECIPES, run_sweep, save_sweep, sweep_table

    unknown = [label for label in args.recipes or [] if label not in RECIPES]
    if unknown:
        raise FlagError(f"--recipes: unknown {unknown}; choose from {list(RECIPES)}")
    if not (Path(__file__).resolve().parents[1] / "persona_data" / f"{args.persona}.jsonl").exists():
        raise FlagError(f"--persona {args.persona}: no persona_data/{args.persona}.jsonl")
    at_least("--max_prompts", args.max_prompts, 1)
    at_least("--max_new_tokens", args.max_new_tokens, 1)
    rows = run_sweep(args.persona, args.recipes, max_prompts=args.max_prompts, max_new_tokens=args.max_new_tokens)
    save_sweep(rows, args.persona, args.out, {"max_prompts": args.max_prompts, "max_new_tokens": args.max_new_tokens})
    print(sweep_table(rows).round(3).to_string())
    print(f"wrote {args.out}")
    return 0


RUNNERS = {"train": run_train, "chat": run_chat, "validate": run_validate, "package": run_package,
           "merge": run_merge, "bench": run_bench, "evaluate": run_evaluate, "sweep": run_sweep}


def main(argv=None):
    from .setup import quiet_libraries_once

    args = build_parser().parse_args(argv)
    quiet_libraries_once()
    try:
        return RUNNERS[args.command](args) or 0
    except (KeyboardInterrupt, EOFError):
        print()
        return 130
    except PersonaLoraError as error:  # known, explained failures: one clear message, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
