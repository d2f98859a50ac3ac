"""Nothing lost, classic pitfalls guarded, and the same training entry on two processes."""
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT
from utils.adapters import read_record
from utils.training import TrainConfig, TrainingError, lora_config, sft_config, train_persona

ZEN = str(ROOT / "persona_data" / "zen_coder.jsonl")
SMALL = ["--dataset_path", ZEN, "--persona_name", "zen_coder", "--per_device_train_batch_size", "2",
         "--max_seq_length", "128", "--eval_fraction", "0.0"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def train_command(out, *extra):
    return [sys.executable, "-m", "utils", "train", *SMALL, "--output_dir", str(out), *extra]


def test_kill_9_then_resume_finishes_the_planned_steps(tmp_path):
    command = train_command(tmp_path, "--max_steps", "6", "--save_steps", "2")
    run = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "zen_coder_checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 300
    while not first.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert first.exists(), "the run wrote a checkpoint before it was killed"
    assert not (tmp_path / "zen_coder_final_adapter").exists(), "an interrupted run leaves no adapter behind"

    done = subprocess.run(train_command(tmp_path, "--max_steps", "6", "--save_steps", "2", "--resume"), cwd=ROOT,
                          env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resuming from" in done.stdout
    record = read_record(tmp_path / "zen_coder_final_adapter")
    assert record["global_steps"] == 6
    assert [e["step"] for e in record["loss_history"]["train"]] == [1, 2, 3, 4, 5, 6]


def small_config(out, **overrides):
    settings = dict(max_steps=3, per_device_train_batch_size=2, max_seq_length=128, eval_fraction=0.0, save_steps=1000)
    return TrainConfig(dataset_path=ZEN, persona_name="zen_coder", output_dir=str(out), **settings | overrides)


def test_same_seed_same_loss_curve(tmp_path):
    curves = []
    for run in ("a", "b"):
        adapter = train_persona(small_config(tmp_path / run, max_steps=2))
        curves.append([e["loss"] for e in read_record(adapter)["loss_history"]["train"]])
    assert curves[0] == curves[1]


def test_out_of_memory_names_the_settings_to_lower(tmp_path, monkeypatch):
    def run_out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("trl.SFTTrainer.train", run_out_of_memory)
    with pytest.raises(TrainingError) as error:
        train_persona(small_config(tmp_path, per_device_train_batch_size=8, max_seq_length=512))
    message = str(error.value)
    assert "from 8 to 4" in message and "from 512 to 256" in message and "--use_quantization" in message


@pytest.mark.parametrize("quantize", [False, True], ids=["16-bit base", "4-bit base"])
def test_the_trainers_lora_weights_are_fp32_on_every_base(quantize, tmp_path):
    """trl casts a 4-bit model's LoRA weights to bf16 inside SFTTrainer; build_trainer keeps fp32 master weights
    (under a T4's fp16 autocast and gradient scaler, bf16 weights would round small updates away)."""
    from utils.hardware import detect_hardware
    from utils.models import load_tokenizer
    from utils.training import build_trainer

    profile = detect_hardware()
    if quantize and not profile.can_quantize:
        pytest.skip("bitsandbytes 4-bit not usable here")
    trainer = build_trainer(small_config(tmp_path, use_quantization=quantize), profile, load_tokenizer())
    trainable = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert trainable == {torch.float32}
    frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
    assert (torch.uint8 in frozen or profile.compute_dtype in frozen), frozen


def test_replay_rows_join_the_training_split_only(tmp_path):
    from utils.hardware import detect_hardware
    from utils.models import load_tokenizer
    from utils.training import build_trainer

    trainer = build_trainer(small_config(tmp_path, replay_fraction=0.5, eval_fraction=0.1), detect_hardware(),
                            load_tokenizer())
    persona_rows = trainer.split["train"] - trainer.split["replay"]
    assert trainer.split["replay"] == round(0.5 * persona_rows) > 0
    assert len(trainer.train_dataset) == trainer.split["train"] and len(trainer.eval_dataset) == trainer.split["eval"]


def test_the_arguments_the_series_passes_exist_in_the_installed_libraries():
    """An upgrade that renames an argument fails here, not in a learner's Colab session."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel
    from transformers import BitsAndBytesConfig, TrainingArguments
    from trl import SFTConfig, SFTTrainer

    from utils.hardware import detect_hardware
    from utils.models import quantization_config

    config = sft_config(small_config("unused"), detect_hardware(), n_train=100, has_eval=True)
    assert isinstance(config, SFTConfig) and isinstance(config, TrainingArguments)
    assert isinstance(lora_config(small_config("unused")), LoraConfig)
    assert isinstance(quantization_config(torch.bfloat16), BitsAndBytesConfig)
    trainer_parameters = inspect.signature(SFTTrainer.__init__).parameters
    assert {"model", "args", "train_dataset", "eval_dataset", "processing_class", "peft_config"} <= set(trainer_parameters)
    blend_parameters = inspect.signature(LoraModel.add_weighted_adapter).parameters
    assert {"adapters", "weights", "adapter_name", "combination_type", "svd_rank"} <= set(blend_parameters)
    for name in ("assistant_only_loss", "max_length", "train_sampling_strategy", "activation_checkpointing",
                 "eval_on_start", "load_best_model_at_end", "neftune_noise_alpha"):
        assert hasattr(config, name), name
    kept = sft_config(small_config("unused", keep_best=True), detect_hardware(), n_train=100, has_eval=True)
    assert not config.load_best_model_at_end and kept.load_best_model_at_end, "the last by default; --keep_best"


def test_two_processes_train_the_same_adapter(tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "cpu_ddp.yaml"), "-m", "utils", "train", *SMALL,
               "--output_dir", str(tmp_path), "--max_steps", "3", "--save_steps", "1000"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    print(f"two-process run: {time.perf_counter() - start:.0f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    checksums = dict(re.findall(r"rank (\d+): adapter checksum (-?[\d.]+)", done.stdout))
    assert sorted(checksums) == ["0", "1"] and checksums["0"] == checksums["1"], done.stdout[-2000:]
    assert read_record(tmp_path / "zen_coder_final_adapter")["global_steps"] == 3
    assert json.loads((tmp_path / "zen_coder_final_adapter" / "adapter_config.json").read_text())["r"] == 16


def test_overwrite_replaces_an_adapter_and_nothing_else(tmp_path):
    first = train_persona(small_config(tmp_path, max_steps=1))
    (tmp_path / "notes.txt").write_text("mine")
    before = (first / "adapter_model.safetensors").read_bytes()
    again = train_persona(small_config(tmp_path, max_steps=2, overwrite=True))
    assert again == first and read_record(again)["global_steps"] == 2
    assert (again / "adapter_model.safetensors").read_bytes() != before
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.replaced"))
