"""Ship to llama.cpp with llama.cpp's own tools: its converters (a model, an adapter), its quantizer, and
llama-cpp-python to run what they wrote. The converters ship inside llama-cpp-python's source distribution, the
same release that built the library, so file format and runtime always match."""
import contextlib
import ctypes
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .colab import installed_version, pins
from .errors import PersonaLoraError

PACKAGE = "llama-cpp-python"
# Where `make setup` (and Colab's first use) unpacks the converters: beside the installed packages.
TOOLS_DIR = Path(os.environ.get("PERSONA_LORA_LLAMA_CPP", Path(sys.prefix) / "llama.cpp"))
TOOLS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py")
# f16 and q8_0 come straight from the converter; q4_k_m is quantized from f16 by llama.cpp's quantizer.
GGUF_TYPES = ("f16", "q8_0", "q4_k_m")
QUANTIZED = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
# llama.cpp's prebuilt CPU wheels (Colab): a pip install in seconds instead of a build of minutes.
CPU_WHEELS = "https://abetlen.github.io/llama-cpp-python/whl/cpu"


class ExportError(PersonaLoraError):
    """Packaging or export failed; the message says why and what to do, in one line."""


def fetch_tools(dest: Path = TOOLS_DIR) -> Path:
    """Unpack llama.cpp's converters from the source distribution of the installed llama-cpp-python (once)."""
    version = installed_version(PACKAGE)
    if version is None:
        raise ExportError(f"{PACKAGE} is not installed: run `make setup` (or pip install {PACKAGE})")
    if (dest / f"VERSION-{version}").exists():
        return dest
    with tempfile.TemporaryDirectory() as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"{PACKAGE}=={version}", "-d", download], check=True)
        archive = next(Path(download).glob("*.tar.gz"))
        prefix = f"{archive.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(archive) as sdist:
            members = [m for m in sdist.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].split("/")[0] in TOOLS]
            for member in members:
                member.name = member.name[len(prefix):]
            sdist.extractall(dest, members=members, filter="data")
    (dest / f"VERSION-{version}").touch()
    return dest


def ensure_llama_cpp(colab: bool = False) -> Path:
    """llama-cpp-python and its converters, installed on Colab the first time a notebook needs them."""
    if colab and installed_version(PACKAGE) is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{PACKAGE}=={pins()[PACKAGE]}",
                        "--extra-index-url", CPU_WHEELS], check=True)
    if not (TOOLS_DIR / TOOLS[0]).exists():
        if not colab:
            raise ExportError(f"llama.cpp's converters are not in {TOOLS_DIR}: run `make setup`")
        fetch_tools()
    return TOOLS_DIR


def run_tool(script: str, *args) -> None:
    """Run one of llama.cpp's converter scripts; its own last error line becomes one ExportError."""
    tool = TOOLS_DIR / script
    if not tool.exists():
        raise ExportError(f"llama.cpp's {script} is not in {TOOLS_DIR}: run `make setup`")
    done = subprocess.run([sys.executable, str(tool), *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ExportError(f"llama.cpp's {script} failed: {lines[-1] if lines else 'exit ' + str(done.returncode)}")


def convert_model(model_dir, path, file_type: str = "f16") -> Path:
    """A saved transformers model folder -> one GGUF file, by llama.cpp's convert_hf_to_gguf.py (+ quantizer)."""
    if file_type not in GGUF_TYPES:
        raise ExportError(f"GGUF type {file_type!r} is not one of {list(GGUF_TYPES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if file_type not in QUANTIZED:
        run_tool("convert_hf_to_gguf.py", model_dir, "--outfile", path, "--outtype", file_type)
        return path
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        f16 = convert_model(model_dir, Path(scratch) / "f16.gguf", "f16")
        return quantize(f16, path, file_type)


def quantize(source, path, file_type: str) -> Path:
    """llama.cpp's quantizer (llama-quantize's library call) from an f16 GGUF file."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZED[file_type])
    params.nthread = os.cpu_count() or 1
    with c_stderr_silenced():  # a line per tensor; notebook 08 reads the types from the file instead
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(path).encode(), ctypes.byref(params))
    if failed:
        raise ExportError(f"llama.cpp could not quantize {source} to {file_type}")
    return Path(path)


@contextlib.contextmanager
def c_stderr_silenced():
    """Send what C code writes to stderr (file descriptor 2) to /dev/null for a while."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def convert_adapter(adapter_dir, base_dir, path) -> Path:
    """A peft LoRA adapter -> an adapter-only GGUF file (f16), by llama.cpp's convert_lora_to_gguf.py. llama.cpp
    and Ollama apply it to the base's GGUF at load time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    run_tool("convert_lora_to_gguf.py", adapter_dir, "--base", base_dir, "--outfile", path, "--outtype", "f16")
    return path


@contextlib.contextmanager
def weights_not_repacked():
    """Load models with the weights as the file holds them (llama.cpp's `--no-repack`). On some Xeons with AMX,
    llama.cpp repacks q8_0 and q4_k_m weights for the matrix units, and its first decode then crashes
    (ggml-org/llama.cpp#20824); llama-cpp-python has no flag for this, so its default model parameters are swapped
    while a model loads."""
    import llama_cpp.llama_cpp as library

    default = library.llama_model_default_params

    def unrepacked():
        params = default()
        params.use_extra_bufts = False
        return params

    library.llama_model_default_params = unrepacked
    try:
        yield
    finally:
        library.llama_model_default_params = default


def load_gguf(path, adapter=None, n_ctx: int = 1024, **options):
    """A GGUF model in llama.cpp (through llama-cpp-python), optionally with an adapter-only GGUF applied."""
    from llama_cpp import Llama

    with c_stderr_silenced(), weights_not_repacked():  # llama.cpp reports each adapter tensor it places
        return Llama(str(path), lora_path=str(adapter) if adapter else None, n_ctx=n_ctx, seed=0, verbose=False,
                     n_threads=os.cpu_count() or 1, **options)


def scores_along(llm, messages, reply_ids):
    """Teacher forcing: llama.cpp reads the prompt (built by the template inside the file) and then a given reply.
    Returns the prompt's tokens and, for each reply token, the scores llama.cpp gave it just before (one row per
    reply token; needs a model loaded with logits_all=True)."""
    import numpy as np

    prompt = llm.tokenize(rendered_prompt(llm, messages).encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(prompt + list(reply_ids))
    return prompt, np.array(llm.scores[len(prompt) - 1: len(prompt) + len(reply_ids) - 1])


def greedy_reply(llm, messages, max_tokens: int) -> tuple[str, str]:
    """A greedy reply through the chat template inside the file: (text, "stop" at end of turn or "length")."""
    choice = llm.create_chat_completion(messages, temperature=0.0, max_tokens=max_tokens)["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def rendered_prompt(llm, messages) -> str:
    """The prompt llama.cpp's own template engine builds from the file's chat template (llama_chat_apply_template)."""
    import llama_cpp

    template = llm.metadata["tokenizer.chat_template"].encode()
    keep = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(keep))(*(llama_cpp.llama_chat_message(r, c) for r, c in keep))
    size = 4 * sum(len(r) + len(c) for r, c in keep) + 256
    buffer = ctypes.create_string_buffer(size)
    length = llama_cpp.llama_chat_apply_template(template, chat, len(keep), True, buffer, size)
    if length < 0:
        raise ExportError("llama.cpp does not recognise this chat template")
    return buffer.raw[:length].decode()
