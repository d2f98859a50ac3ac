"""The first cell of every notebook: on Colab, install what's missing and keep outputs on Drive; everywhere,
quiet the libraries' import-time noise and report the hardware."""
import logging
import os
import warnings

from .colab import in_colab, install_for_colab, keep_outputs_on_drive


def quiet_libraries_once():
    """bitsandbytes' CPU backend warns on every import about an optional download (no network here); transformers'
    own internals still use the deprecated name of activation checkpointing. Called by notebooks and the CLI, not
    on import."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)


def prepare_notebook(use_drive: bool = True):
    """Install (Colab only), detect the hardware, print device/precision/memory; returns the HardwareProfile."""
    quiet_libraries_once()
    if in_colab():
        restart = install_for_colab()
        if restart:
            print(f"{', '.join(restart)} changed after being imported: Runtime > Restart session, then run again.")
        if use_drive:
            print("outputs kept on Google Drive in", keep_outputs_on_drive())
    from .hardware import describe, detect_hardware

    from .doctor import quick_checks

    for check in quick_checks():
        if not check.ok:
            print(check.line())
    profile = detect_hardware()
    cap_gpu_memory(profile)
    print(describe(profile))
    return profile


def cap_gpu_memory(profile):
    """PERSONA_LORA_GPU_MEMORY_GIB=15 lets this process use only that much of a bigger GPU: a T4's 15 GiB (the T4
    rehearsal sets it), so what does not fit on a T4 fails here too."""
    cap = os.environ.get("PERSONA_LORA_GPU_MEMORY_GIB")
    if cap and profile.device == "cuda":
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(cap) * 2**30 / total))
