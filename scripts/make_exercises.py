"""Write a copy of the series for handing out: every tracked file, with the notebooks' solution cells removed.

    python scripts/make_exercises.py [--out build/exercises]     (or: make exercises)

The exercise cells and their self-checks stay; a check prints "not solved yet" until the learner fills it in.
"""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from run_series import tags  # noqa: E402


def without_solutions(notebook):
    notebook.cells = [c for c in notebook.cells if "solution" not in tags(c)]
    return notebook


def make_exercises(out: Path) -> Path:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    shutil.rmtree(out, ignore_errors=True)
    for name in files:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("notebooks/") and name.endswith(".ipynb"):
            nbformat.write(without_solutions(nbformat.read(ROOT / name, as_version=4)), target)
        else:
            shutil.copy2(ROOT / name, target)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "exercises")
    out = make_exercises(parser.parse_args(argv).out)
    print(f"wrote the series without solutions to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
