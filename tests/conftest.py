import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PERSONA_FILES = sorted((ROOT / "persona_data").glob("*.jsonl"))
# Modules whose tests train, execute a notebook or drive a browser: `make test-fast` leaves them out.
SLOW_MODULES = {"test_bench", "test_blend", "test_browser_chat", "test_chat", "test_evaluate", "test_export",
                "test_notebook_01", "test_notebook_02", "test_notebook_03", "test_notebook_06",
                "test_new_persona", "test_notebooks_04_05", "test_reliability", "test_training"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES or "pirate_adapter" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def outputs_text(notebook_path) -> str:
    """Everything an executed notebook printed or displayed, as one text to search."""
    import nbformat

    cells = nbformat.read(notebook_path, as_version=4).cells
    return "\n".join(o.get("text", "") or json.dumps(o.get("data", {})) for c in cells for o in c.get("outputs", []))


@pytest.fixture(scope="session")
def tokenizer():
    from utils.models import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def pirate_adapter(tmp_path_factory):
    """One short real LoRA training run on the embedded model, shared by the tests that need a trained adapter."""
    from utils.training import TrainConfig, train_persona

    config = TrainConfig(dataset_path=str(ROOT / "persona_data" / "captain_codebeard.jsonl"),
                         persona_name="captain_codebeard", output_dir=str(tmp_path_factory.mktemp("adapters")),
                         max_steps=24, max_seq_length=256, learning_rate=1e-3, per_device_train_batch_size=8,
                         save_steps=1000)
    return train_persona(config)
