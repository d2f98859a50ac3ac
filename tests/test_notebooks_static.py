"""What every committed notebook must be, read without running it; and its first cell, run twice on a stand-in
Colab (a fake google.colab module, a temporary /content, a local clone)."""
import json
import os
import subprocess
import sys
import textwrap

import nbformat
import pytest

from conftest import ROOT
from utils.training import TrainConfig

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_with_one_parameters_cell_and_a_gpu_runtime(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip the outputs before committing"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert notebook.metadata.get("accelerator") == "GPU" and notebook.metadata["colab"]["gpuType"] == "T4"
    assert code[0].source == nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source, "one setup cell for all"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_max_seq_length_across_the_series(path):
    parameters = next(c.source for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    for line in parameters.splitlines():
        if line.startswith(("MAX_SEQ_LENGTH =", "MAX_LENGTH =")):
            assert int(line.split("=")[1].split("#")[0]) == TrainConfig.max_seq_length, line


STAND_IN = """
import sys, types
colab = types.ModuleType("google.colab")
colab.drive = types.SimpleNamespace(mount=lambda path: print("mounted", path))
google = types.ModuleType("google"); google.colab = colab
sys.modules.update({"google": google, "google.colab": colab})
"""


def test_the_first_cell_runs_twice_on_a_stand_in_colab(tmp_path):
    """A fresh runtime clones the series; a second run (after a restart) finds the clone instead of failing."""
    clone = tmp_path / "content" / "persona-lora-series"
    first = nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source
    cell = (first.replace("/content/persona-lora-series", str(clone))
                 .replace("https://github.com/persona-lora/persona-lora-series", str(ROOT)))
    script = tmp_path / "first_cell.py"
    script.write_text(textwrap.dedent(STAND_IN) + cell + "\nprint('root:', root)\n")
    env = {**os.environ, "PERSONA_LORA_DRIVE_FOLDER": str(tmp_path / "drive"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": ""}
    for run in (1, 2):
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"root: {clone}" in done.stdout and "device:" in done.stdout, done.stdout
        assert "installing" not in done.stdout, "the pinned versions are installed: nothing to install"
    assert (clone / "trained_adapters").resolve() == (tmp_path / "drive" / "trained_adapters").resolve()
    assert json.loads((ROOT / "notebooks" / NOTEBOOKS[0].name).read_text())["metadata"]["accelerator"] == "GPU"


def test_a_kernel_that_crashes_ends_the_run_at_once(tmp_path):
    """A segfault in a notebook (llama.cpp did one) stops `make run` with DeadKernelError, instead of a hang."""
    from nbclient.exceptions import DeadKernelError
    from run_series import run_notebook

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os, signal\n"
                                                                         "os.kill(os.getpid(), signal.SIGSEGV)")])
    path = tmp_path / "crash.ipynb"
    nbformat.write(notebook, path)
    with pytest.raises(DeadKernelError):
        run_notebook(path, out_dir=tmp_path / "out", timeout=120)
