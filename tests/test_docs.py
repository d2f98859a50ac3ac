"""The README's and the teaching guide's notebook tables say what the repository measured: each is exactly what
scripts/update_docs.py writes from figures/timings.json and utils.colab.REPO."""
import pytest

from conftest import ROOT
from update_docs import BEGIN, END, notebook_table, with_repo


@pytest.mark.parametrize("doc", ["README.md", "notebooks/TEACHING.md"])
def test_the_notebook_table_is_the_measured_one(doc):
    text = (ROOT / doc).read_text()
    table = text.split(BEGIN)[1].split(END)[0].strip()
    assert table == notebook_table().strip(), f"run `python scripts/update_docs.py` after `make run` ({doc})"


def test_every_first_cell_clones_the_one_repo_setting():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert with_repo(path.read_text()) == path.read_text(), path.name
