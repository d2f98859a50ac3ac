"""`python -m utils <command>`: the series from the shell, with the same code the notebooks use. All argument
parsing and printing live here; every other module returns values or raises a PersonaLoraError, whose one-line
message is printed once, below, without a traceback."""
import argparse
import dataclasses
import sys

from .errors import FlagError, PersonaLoraError
from .hardware import PRECISIONS
from .llama_cpp import GGUF_TYPES
from .training import TrainConfig


def add_config_arguments(parser, config_class, required: dict):
    """One flag per field of a config dataclass: `required` ones first (with their help), then the rest, which
    default to None: `config_from` then knows what was given. --precision (and its alias --use_bf16) is shared by
    every command that trains or runs."""
    for name, help_text in required.items():
        parser.add_argument(f"--{name}", required=True, help=help_text)
    defaults = config_class(**dict.fromkeys(required, ""))
    for field in dataclasses.fields(config_class):
        if field.name in (*required, "precision"):
            continue
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(f"--{field.name}", action="store_true", default=None)
        else:
            parser.add_argument(f"--{field.name}", type=type(default), default=None, help=f"default: {default}")
    add_precision_arguments(parser)


def config_from(args, config_class, recipe: dict | None = None):
    """The config: the dataclass' defaults, then `recipe`, then the flags given on the command line."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
             if f.name != "precision" and getattr(args, f.name) is not None}
    return config_class(**((recipe or {}) | given), precision=precision_of(args))


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
    else:
        parser.add_argument("--gguf_adapter", action="store_true",
                            help="also write the adapter alone as GGUF, its base as GGUF and an Ollama Modelfile")
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


def add_prefer_arguments(parser):
    from .preference import PreferConfig

    add_config_arguments(parser, PreferConfig, {"adapter_path": "the SFT adapter (*_final_adapter) to tune"})
    parser.add_argument("--evaluate", metavar="OUT_JSON", help="then write SFT vs SFT+DPO metrics to this file")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m utils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_config_arguments(commands.add_parser("train", help="train a persona LoRA adapter"), TrainConfig,
                         {"dataset_path": None, "persona_name": "picks this persona's rows from a mixed file"})
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
    commands.add_parser("doctor", help="is this machine ready for the series? (under a minute)")
    add_prefer_arguments(commands.add_parser("prefer", help="DPO on top of a persona's SFT adapter (notebook 09)"))
    sweep = commands.add_parser("sweep", help="train one persona with several recipes, score each (notebook 06)")
    sweep.add_argument("--persona", default="professor_snugglesworth")
    sweep.add_argument("--recipes", nargs="*", help="labels of utils.sweep.RECIPES (default: all)")
    sweep.add_argument("--out", help="default: figures/recipe_sweep_<persona>.json")
    sweep.add_argument("--max_prompts", type=int, default=24)
    sweep.add_argument("--max_new_tokens", type=int, default=96)
    sweep.add_argument("--seeds", type=int, nargs="*", help="train each recipe once per seed (default: once, its own)")
    return parser


def precision_of(args) -> str:
    """--precision, or bf16 for the seed projects' --use_bf16; "auto" when neither is given."""
    if args.use_bf16 and args.precision not in (None, "bf16"):
        raise FlagError(f"--use_bf16 contradicts --precision {args.precision}: give one of them")
    return args.precision or ("bf16" if args.use_bf16 else "auto")


def at_least(minimum, **flags):
    for flag, value in flags.items():
        if value is not None and value < minimum:
            raise FlagError(f"--{flag} {value} is out of range: use a number >= {minimum}")


def run_train(args):
    from .training import persona_recipe, train_persona

    recipe = persona_recipe(args.persona_name)
    if recipe:
        print(f"{args.persona_name}: the recipe in persona_data/recipes.json sets {recipe} (flags given win)")
    train_persona(config_from(args, TrainConfig, recipe))


def run_validate(args):
    from .data import validate_file

    tokenizer = None
    if args.max_seq_length:
        at_least(1, max_seq_length=args.max_seq_length)
        from .models import load_tokenizer

        tokenizer = load_tokenizer(args.model_id)
    problems = [p for path in args.paths for p in validate_file(path, tokenizer, args.max_seq_length)]
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    print(f"{len(args.paths)} file(s) checked: {errors} error(s), {len(problems) - errors} warning(s)", file=sys.stderr)
    return 1 if errors else 0


def typed_turns(prompt: str | None):
    """The one --prompt, or what the user types until "exit" or "quit"."""
    if prompt:
        yield prompt
        return
    while (text := input("you> ").strip()) not in ("exit", "quit"):
        if text:
            yield text


def run_chat(args):
    from .hardware import detect_hardware, with_precision
    from .inference import check_sampling, stream_reply, with_system_prompt
    from .loading import load_for_chat

    sampling = dict(temperature=args.temperature, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                    max_new_tokens=args.max_new_tokens)
    check_sampling(**sampling)
    profile = with_precision(detect_hardware(), precision_of(args))  # checked before any model loads
    if args.use_quantization and args.merge_adapter:
        print("--merge_adapter merges into an unquantized base (merging into 4-bit weights loses quality).")
    model, tokenizer, recorded_prompt = load_for_chat(args.adapter_path, args.model_id, profile,
                                                      args.use_quantization, precision_of(args), args.merge_adapter)
    history = []
    for text in typed_turns(args.prompt):
        history.append({"role": "user", "content": text})
        print("" if args.prompt else "persona> ", end="", flush=True)
        messages = with_system_prompt(history, args.system_prompt or recorded_prompt)
        pieces = [print(piece, end="", flush=True) or piece for piece in
                  stream_reply(model, tokenizer, messages, **sampling)]
        print()
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
    return 0


def ship(folder, repo_id: str | None):
    from .hub import file_sizes, push_to_hub

    for name, size in file_sizes(folder).items():
        print(f"{size / 2**20:9.1f} MiB  {name}")
    print(f"written to {folder}")
    if repo_id:
        print("pushed to", push_to_hub(folder, repo_id))


def run_ship(args):
    from .export import merge_adapter, package_adapter

    common = dict(repo_id=args.push_to_hub, overwrite=args.overwrite)
    folder = (merge_adapter(args.adapter_path, args.out, gguf_types=args.gguf, **common) if args.command == "merge"
              else package_adapter(args.adapter_path, args.out, gguf_adapter=args.gguf_adapter, **common))
    ship(folder, args.push_to_hub)


def run_bench(args):
    from . import bench
    from .hardware import describe, detect_hardware, with_precision

    at_least(1, steps=args.steps, batch_size=args.batch_size)
    profile = detect_hardware(cuda=args.device == "cuda" if args.device else None)
    precision = precision_of(args)
    with_precision(profile, precision)  # an impossible precision fails before any model loads
    print(describe(profile))
    settings = bench.comparison(args.use_quantization, None if precision == "auto" else precision, args.sweep)
    steps, batch_size = (2, 2) if args.quick else (args.steps, args.batch_size)
    results, peaks = bench.run_comparison(settings, profile, args.model_config, steps, batch_size,
                                          progress=lambda label: print(f"... {label}", flush=True))
    print(bench.format_table(results, peaks, profile.device))
    print(bench.summary_line(results[1], results[0]))
    return 0


def run_evaluate(args):
    from .evaluate import evaluate_adapters, metrics_table

    at_least(1, max_prompts=args.max_prompts, max_new_tokens=args.max_new_tokens)
    report = evaluate_adapters(args.adapters_dir, args.out, max_prompts=args.max_prompts,
                               max_new_tokens=args.max_new_tokens, progress=print)
    print(metrics_table(report).round(3).to_string())
    print(f"style classifier on held-out references: {report['classifier_accuracy_on_references']:.3f}")
    for name, checks in report["targets"].items():
        print(f"{name}: " + ", ".join(f"{target} {'yes' if held else 'NO'}" for target, held in checks.items()))
    print(f"wrote {args.out} in {report['settings']['seconds']:.0f} s")
    return 0


def run_sweep(args):
    from .judge import JUDGE_READS
    from .sweep import check_sweep, run_sweep, save_sweep, sweep_table

    check_sweep(args.persona, args.recipes)
    out = args.out or f"figures/recipe_sweep_{args.persona}.json"
    at_least(1, max_prompts=args.max_prompts, max_new_tokens=args.max_new_tokens)
    settings = {"max_prompts": args.max_prompts, "max_new_tokens": args.max_new_tokens,
                "prompts": "spread over the eval file", "judge": JUDGE_READS}
    rows = run_sweep(args.persona, args.recipes, max_prompts=args.max_prompts, max_new_tokens=args.max_new_tokens,
                     seeds=args.seeds, progress=print,
                     on_row=lambda rows: save_sweep(rows, args.persona, out, settings))
    print(sweep_table(rows).round(3).to_string())
    print(f"wrote {out}")
    return 0


def run_prefer(args):
    from .evaluate import evaluate_preference, save_report
    from .preference import PreferConfig, prefer_persona

    adapter = prefer_persona(config_from(args, PreferConfig))
    print(f"saved the DPO adapter to {adapter}")
    if args.evaluate:
        report = evaluate_preference(args.adapter_path, adapter)
        save_report(report, args.evaluate)
        for name, metrics in report["personas"].items():
            print(name + ": " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return 0


def run_doctor(args):
    from .doctor import all_checks, blocked

    checks = all_checks()
    for check in checks:
        print(check.line())
    verdict = blocked(checks)
    print("NOT READY: fix the FAIL lines above" if verdict else "ready for the series")
    return 1 if verdict else 0


RUNNERS = {"doctor": run_doctor, "prefer": run_prefer, "train": run_train, "chat": run_chat,
           "validate": run_validate, "package": run_ship, "merge": run_ship, "bench": run_bench,
           "evaluate": run_evaluate, "sweep": run_sweep}


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
