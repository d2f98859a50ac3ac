"""Exercises: every one has a stub, a self-check that says "not solved yet" while the stub is empty, and a solution
cell; `make exercises` hands out the series without the solutions. (The notebook tests run the solved versions.)"""
import nbformat
import pytest

from conftest import ROOT
from make_exercises import make_exercises
from run_series import exercises, solution_code

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_has_a_stub_a_check_and_a_solution(path):
    notebook = nbformat.read(path, as_version=4)
    pairs = exercises(notebook)
    assert pairs, "every notebook ends with an exercise"
    for stub, solution in pairs:
        assert "return None" in notebook.cells[stub].source and solution_code(notebook.cells[solution]).strip()
        check = notebook.cells[stub + 1]
        assert check.cell_type == "code" and "not solved" in check.source and "None" in check.source, \
            "the cell after a stub checks it, and says so while it is empty"


def test_make_exercises_drops_exactly_the_solutions(tmp_path):
    out = make_exercises(tmp_path / "exercises")
    for path in NOTEBOOKS:
        original, handed_out = (nbformat.read(p, as_version=4) for p in (path, out / "notebooks" / path.name))
        solutions = len(exercises(original))
        assert len(handed_out.cells) == len(original.cells) - solutions
        assert not any("solution" in c.metadata.get("tags", []) for c in handed_out.cells)
        assert sum("exercise" in c.metadata.get("tags", []) for c in handed_out.cells) == solutions, "stubs stay"
    assert (out / "utils" / "training.py").exists() and (out / "Makefile").exists(), "the whole series travels"
