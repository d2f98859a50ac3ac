"""`python -m utils <command>`: train, chat and validate from the shell, with the same code the notebooks use."""
import argparse
import dataclasses
import sys

from .export import add_ship_arguments, run_merge, run_package
from .training import TrainConfig

LOADING_ERRORS = ("DataError", "ModelLoadError", "AdapterExistsError", "TrainingError", "ExportError",
                  "NoAdaptersError")


def add_train_arguments(parser):
    defaults = TrainConfig(dataset_path="", persona_name="")
    parser.add_argument("--dataset_path", required=True)
    parser.add_argument("--persona_name", required=True)
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("dataset_path", "persona_name", "use_bf16"):
            continue
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(f"--{field.name}", action="store_true")
        else:
            parser.add_argument(f"--{field.name}", type=type(default), default=default)
    parser.add_argument("--use_bf16", action="store_true", default=None,
                        help="ask for bf16; where the hardware can't, fp16 or fp32 is used with a one-line note")


def add_chat_arguments(parser):
    parser.add_argument("--model_id", default="embedded")
    parser.add_argument("--adapter_path")
    parser.add_argument("--prompt", help="print one reply and exit (without it: an interactive loop)")
    parser.add_argument("--system_prompt", help="override the persona's system prompt recorded with the adapter")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=0.9)
    parser.add_argument("--repetition_penalty", type=float, default=1.1)
    parser.add_argument("--merge_adapter", action="store_true", help="merge the adapter into an unquantized base")
    parser.add_argument("--use_quantization", action="store_true")


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
    evaluate.add_argument("--max_new_tokens", type=int, default=48)
    return parser


def add_bench_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="2 steps of batch 2: a smoke test (~1-2 min on 2 cores)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--batch_size", type=int, default=TrainConfig.per_device_train_batch_size)
    parser.add_argument("--model_config", default="embedded", help="embedded, or random weights in a known shape: "
                        "smollm2-360m, smollm2-1.7b, qwen2.5-1.5b, phi-3-mini (no download)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: a CUDA GPU if there is one")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help="ours' precision (default: auto)")
    parser.add_argument("--use_quantization", action="store_true", help="4-bit NF4 base in both runs (QLoRA)")
    parser.add_argument("--sweep", action="store_true", help="also one change at a time from ours (notebook 07)")


def run_bench(args):
    from .bench import run

    return run(args)


def run_evaluate(args):
    from .evaluate import run

    return run(args)


def run_train(args):
    from .training import train_persona

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    train_persona(TrainConfig(**values))


def run_validate(args):
    from .data import validate_file

    tokenizer = None
    if args.max_seq_length:
        from .models import load_tokenizer

        tokenizer = load_tokenizer(args.model_id)
    problems = [p for path in args.paths for p in validate_file(path, tokenizer, args.max_seq_length)]
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    print(f"{len(args.paths)} file(s) checked: {errors} error(s), {len(problems) - errors} warning(s)", file=sys.stderr)
    return 1 if errors else 0


def load_chat_model(args):
    from .hardware import detect_hardware
    from .inference import attach_adapters
    from .models import load_base_model, load_tokenizer
    from .training import read_record

    profile = detect_hardware()
    record = read_record(args.adapter_path) if args.adapter_path else {}
    model_id = record.get("base_model", args.model_id) if args.model_id == "embedded" else args.model_id
    tokenizer = load_tokenizer(model_id)
    quantize = args.use_quantization and not args.merge_adapter
    if args.use_quantization and args.merge_adapter:
        print("--merge_adapter merges into an unquantized base (merging into 4-bit weights loses quality).")
    model = load_base_model(model_id, profile, quantize=quantize)
    if args.adapter_path:
        model = attach_adapters(model, {record.get("persona", "persona"): args.adapter_path})
        if args.merge_adapter:
            model = model.merge_and_unload()
    system_prompt = args.system_prompt or record.get("system_prompt")
    return model, tokenizer, system_prompt


def run_chat(args):
    from .inference import stream_reply, with_system_prompt

    model, tokenizer, system_prompt = load_chat_model(args)
    sampling = dict(temperature=args.temperature, top_p=args.top_p,
                    repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens)
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    runner = {"train": run_train, "chat": run_chat, "validate": run_validate,
              "package": run_package, "merge": run_merge, "bench": run_bench, "evaluate": run_evaluate}[args.command]
    try:
        return runner(args) or 0
    except (KeyboardInterrupt, EOFError):
        print()
        return 130
    except Exception as error:  # known, explained failures: one clear message, no traceback
        if type(error).__name__ not in LOADING_ERRORS:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
