"""The sweep's table: one line per recipe, the mean of its runs and its loop rate's range (the committed seeds round)."""
import json
import statistics

import pytest

from conftest import ROOT
from utils.sweep import sweep_table


def test_a_recipe_trained_with_several_seeds_is_one_line_with_its_mean_and_range():
    rows = json.loads((ROOT / "figures" / "recipe_sweep_seeds_master_brindlewood.json").read_text())["recipes"]
    table = sweep_table(rows)
    for recipe, line in table.iterrows():
        loops = [row["repetition_rate_adapter"] for row in rows if row["recipe"] == recipe]
        assert line["runs"] == len(loops) == 3 and len({row["seed"] for row in rows if row["recipe"] == recipe}) == 3
        assert line["repetition_rate_adapter"] == pytest.approx(statistics.mean(loops))
        assert (line["loops_min"], line["loops_max"]) == (min(loops), max(loops))
