"""Write persona_data/neutral/base_model.jsonl: the embedded base model's own replies (greedy, no system prompt, as
notebook 06 asks the "base" system) to *training* prompts of every persona and of the plain assistant, never to an
eval prompt. The style judge's neutral class learns the base's register from them ("Here's a step-by-step guide:
1. **...**"), so that a plain base reply is not mistaken for a persona's.

    python scripts/make_base_replies.py          # ~2 min on 2 CPU cores; rerun after changing the training prompts
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.data import DATA_DIR, load_conversations  # noqa: E402
from utils.evaluate import MAX_NEW_TOKENS, ask, generate  # noqa: E402
from utils.inference import BASE  # noqa: E402
from utils.models import load_base_model, load_tokenizer  # noqa: E402
from utils.training import REPLAY_FILE as OUT  # noqa: E402


def training_prompts(every: int) -> list[str]:
    """The first user turn of every `every`-th training conversation, over all persona files and the plain one."""
    files = sorted(DATA_DIR.glob("*.jsonl")) + [DATA_DIR / "neutral" / "plain_assistant.jsonl"]
    firsts = [next(m["content"] for m in c["messages"] if m["role"] == "user")
              for path in files for c in load_conversations(path)]
    return list(dict.fromkeys(firsts[::every]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=4, help="take every n-th training conversation's prompt")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error(f"--every {args.every}: use an integer >= 1")
    prompts = training_prompts(args.every)
    model, tokenizer = load_base_model().eval(), load_tokenizer()
    replies, _ = generate(model, tokenizer, BASE, [ask(p) for p in prompts], MAX_NEW_TOKENS)
    lines = [json.dumps({"persona": "base_model", "messages": ask(p, reply=r)}, ensure_ascii=False)
             for p, r in zip(prompts, replies) if r]
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} base-model replies -> {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
