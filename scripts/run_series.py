"""Execute the notebook series in order, headless; executed copies go to build/notebooks/ (git-ignored).

    python scripts/run_series.py                      # the full series, as `make run` does
    python scripts/run_series.py 04 --param max_steps=5   # one notebook, with a parameter overridden
"""
import argparse
import ast
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build" / "notebooks"


def series() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def inject_parameters(notebook, params: dict):
    """Like papermill: add a cell of overrides right after the cell tagged `parameters`."""
    if not params:
        return
    lines = ["# Parameters injected by scripts/run_series.py"] + [f"{k} = {v!r}" for k, v in params.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    notebook.cells.insert(index + 1, cell)


def tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def solution_code(cell) -> str:
    return re.search(r"```python\n(.*?)```", cell.source, re.S).group(1)


def exercises(notebook) -> list[tuple[int, int]]:
    """(stub cell, solution cell) index pairs: each cell tagged "solution" with the nearest cell tagged "exercise"
    (the code the learner fills in)."""
    stubs = [i for i, c in enumerate(notebook.cells) if "exercise" in tags(c)]
    solutions = [i for i, c in enumerate(notebook.cells) if "solution" in tags(c)]
    return [(min(stubs, key=lambda stub: abs(stub - i)), i) for i in solutions]


def solve_exercises(notebook):
    """Each exercise solved: its stub cell runs, then its solution's code (which redefines what the stub left empty)."""
    for stub, solution in exercises(notebook):
        notebook.cells[stub].source += "\n\n# the solution\n" + solution_code(notebook.cells[solution])


def announce_cells(notebook, name: str):
    """A hook that prints which code cell runs, "04 cell 12/20", so a long notebook is visibly alive."""
    code = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code"]

    def on_cell_start(cell, cell_index):
        if cell_index in code:
            print(f"   {name[:2]} cell {code.index(cell_index) + 1}/{len(code)}", flush=True)
    return on_cell_start


def run_notebook(path: Path, params: dict | None = None, out_dir: Path = BUILD, timeout: int = 1800,
                 progress: bool = False, solved: bool = False) -> Path:
    """Execute one notebook (its parameters overridden, its exercises solved if asked); returns the executed copy."""
    notebook = nbformat.read(path, as_version=4)
    inject_parameters(notebook, params or {})
    if solved:
        solve_exercises(notebook)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    # IPC sockets, not TCP: a local kernel needs no network port (and ipykernel warns about unencrypted TCP). The
    # socket files go to a folder of their own: a kernel that is killed cannot leave them in the repository.
    sockets = tempfile.TemporaryDirectory(prefix="kernel-")
    # The async manager: nbclient's polling then notices a kernel that crashed (the blocking one hung on it).
    kernel = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets.name) / "ipc"))
    if progress:  # training inside the kernel writes a progress line to the terminal (utils.training)
        os.environ["PERSONA_LORA_PROGRESS"] = "1"
    client = NotebookClient(notebook, km=kernel, timeout=timeout, resources={"metadata": {"path": str(ROOT)}},
                            on_cell_start=announce_cells(notebook, path.name) if progress else None)
    try:
        client.execute()
    finally:
        nbformat.write(notebook, out)
        if kernel.has_kernel:
            run_sync(kernel.shutdown_kernel)(now=True)
        sockets.cleanup()
    return out


def parse_param(text: str):
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="notebook number prefixes to run (default: all)")
    parser.add_argument("--param", action="append", default=[], help="NAME=VALUE override, repeatable")
    args = parser.parse_args(argv)
    params = dict(parse_param(p) for p in args.param)
    chosen = [p for p in series() if not args.only or p.name[:2] in args.only]
    timings = {}
    for path in chosen:
        start = time.perf_counter()
        print(f"== {path.name} ...", flush=True)
        out = run_notebook(path, params, progress=True)
        timings[path.stem] = round(time.perf_counter() - start)
        print(f"   done in {timings[path.stem]} s -> {out.relative_to(ROOT)}", flush=True)
    if not args.only and not params:  # a full run of the defaults: the times the README and TEACHING.md quote
        (ROOT / "figures" / "timings.json").write_text(json.dumps(
            {"notebooks_seconds": timings, "total_seconds": sum(timings.values()),
             "machine": f"{os.cpu_count()} CPU cores"}, indent=2) + "\n")
    print(f"== all done in {sum(timings.values()) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
