"""Write the notebook tables of README.md and notebooks/TEACHING.md from what the repository measured and holds:
each notebook's `make run` time (figures/timings.json) and its "Open in Colab" link (the one setting,
utils.colab.REPO, which every notebook's first cell clones too).

    python scripts/update_docs.py      # after `make run`, or after changing utils.colab.REPO for your copy
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.colab import colab_url, repo_url  # noqa: E402

BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
BEGIN, END = "<!-- notebook table: scripts/update_docs.py -->", "<!-- end of notebook table -->"
LEARN = {
    "01": "what makes a persona data set: the voice from the first sentence; look, validate",
    "02": "templates, token ids, assistant-only labels, two classic failures",
    "03": "write W·x + (α/r)·B·A·x yourself, watch it learn, check it against `peft`",
    "04": "4-bit NF4 + LoRA + `SFTConfig`/`SFTTrainer` written out; one adapter per persona",
    "05": "switching adapters, loss curves, greedy vs sampling, merging, a chat widget",
    "06": "a style judge, few-shot baseline, NLL, forgetting, loops; the recipe sweep; blending and `linear`'s overshoot",
    "07": "where the time and memory go, MFU, what each setting is worth, T4 sizing, multi-GPU",
    "08": "package with a model card, merge, GGUF by llama.cpp's converter, run in llama.cpp, Ollama, publish",
    "09": "DPO on top of SFT: pairs, the loss by hand vs trl's, under pressure, against its own loops, the thumbs",
}


def minutes(seconds: int) -> str:
    return f"{seconds} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def notebook_table() -> str:
    timings = json.loads((ROOT / "figures" / "timings.json").read_text())["notebooks_seconds"]
    rows = ["| notebook | you learn | CPU, `make run` (2 cores) | Colab |", "|---|---|---|---|"]
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        title = json.loads(path.read_text())["cells"][0]["source"][0].strip("# \n")
        seconds = timings.get(path.stem)
        rows.append(f"| [{title}](notebooks/{path.name}) | {LEARN.get(path.name[:2], '')} | "
                    f"{minutes(seconds) if seconds is not None else 'not run'} | "
                    f"[![Open in Colab]({BADGE})]({colab_url(path.name)}) |")
    total = sum(timings.values())
    rows.append(f"\nCPU times are those of the last full `make run` (`figures/timings.json`): {total / 60:.1f} min for "
                "the whole series on 2 cores, embedded model.")
    return "\n".join(rows)


def with_table(text: str) -> str:
    block = f"{BEGIN}\n{notebook_table()}\n{END}"
    return re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)


def with_repo(text: str) -> str:
    return re.sub(r'REPO_URL = \\"[^\\"]*\\"', f'REPO_URL = \\\\"{repo_url()}\\\\"', text)


def main() -> int:
    for doc in (ROOT / "README.md", ROOT / "notebooks" / "TEACHING.md"):
        if doc.exists():
            doc.write_text(with_table(doc.read_text()))
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        path.write_text(with_repo(path.read_text()))
        json.loads(path.read_text())
    print(f"tables from figures/timings.json; Colab links and first cells point at {repo_url()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
