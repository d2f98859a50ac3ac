"""An Ollama Modelfile beside a GGUF file: the model's chat template in Ollama's words, the persona's system prompt,
the end-of-turn token as a stop word and the chat's sampling. Without the template and the stop word, llama.cpp-based
tools prompt the model in a format it never saw and let it talk past the end of its turn."""
from pathlib import Path

from .chat import CHAT_SAMPLING
from .errors import PersonaLoraError

# Stand-ins rendered through the model's own chat template, then replaced by Ollama's template variables.
SLOTS = {"system": "\x00SYSTEM\x00", "user": "\x00PROMPT\x00", "assistant": "\x00RESPONSE\x00"}
OLLAMA_SLOTS = {"system": "{{ .System }}", "user": "{{ .Prompt }}", "assistant": "{{ .Response }}"}
OLLAMA_SAMPLING = {"temperature": CHAT_SAMPLING["temperature"], "top_p": CHAT_SAMPLING["top_p"],
                   "repeat_penalty": CHAT_SAMPLING["repetition_penalty"]}


class ModelfileError(PersonaLoraError):
    pass


def ollama_template(tokenizer) -> tuple[str, str]:
    """(TEMPLATE, end-of-turn token): one system + user + assistant turn of the model's own chat template, with
    Ollama's {{ .System }}, {{ .Prompt }} and {{ .Response }} where the text goes. Ollama repeats it per turn."""
    turn = [{"role": role, "content": slot} for role, slot in SLOTS.items()]
    text = tokenizer.apply_chat_template(turn, tokenize=False)
    prompt = tokenizer.apply_chat_template(turn[:2], tokenize=False, add_generation_prompt=True)
    if not text.startswith(prompt + SLOTS["assistant"]):
        raise ModelfileError("this chat template's reply is not a plain continuation of its prompt: write the "
                             "Modelfile's TEMPLATE by hand")
    after_reply = text.split(SLOTS["assistant"], 1)[1]
    end = next((t for t in tokenizer.all_special_tokens if after_reply.startswith(t)), tokenizer.eos_token)
    for role, slot in SLOTS.items():
        text = text.replace(slot, OLLAMA_SLOTS[role])
    return text, end


def write_modelfile(folder, gguf_file, tokenizer, system_prompt: str, adapter_file=None) -> Path:
    """`folder/Modelfile`: FROM the GGUF (and ADAPTER, for an adapter-only GGUF applied to its base's GGUF)."""
    template, end = ollama_template(tokenizer)
    if '"""' in system_prompt + template:
        raise ModelfileError('the system prompt or template holds """, which a Modelfile cannot quote')
    folder = Path(folder)
    name = Path(adapter_file or gguf_file).stem
    lines = [f"# ollama create {name} -f Modelfile  &&  ollama run {name}",
             f"FROM ./{Path(gguf_file).relative_to(folder)}"]
    if adapter_file:
        lines.append(f"ADAPTER ./{Path(adapter_file).relative_to(folder)}")
    lines += [f'TEMPLATE """{template}"""', f'SYSTEM """{system_prompt}"""', f'PARAMETER stop "{end}"']
    lines += [f"PARAMETER {key} {value}" for key, value in OLLAMA_SAMPLING.items()]
    path = folder / "Modelfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def modelfile_command(folder) -> str:
    """The shell line (the Modelfile's first, a comment) that makes and runs the Ollama model."""
    return (Path(folder) / "Modelfile").read_text().splitlines()[0].removeprefix("# ")


def read_modelfile(path) -> dict:
    """The Modelfile's instructions by name (PARAMETER as a list); what tests and notebook 08 check."""
    text = Path(path).read_text()
    lines = text.splitlines()
    found = {key: line.split(" ", 1)[1] for line in lines for key in ("FROM", "ADAPTER") if line.startswith(key + " ")}
    for key in ("TEMPLATE", "SYSTEM"):
        found[key] = text.split(f'{key} """', 1)[1].split('"""', 1)[0]
    found["PARAMETER"] = [line.split(" ", 1)[1] for line in lines if line.startswith("PARAMETER ")]
    return found


def render(template: str, system: str, prompt: str) -> str:
    """What Ollama's template gives for one system + user turn, up to where the reply goes."""
    return template.split(OLLAMA_SLOTS["assistant"])[0].replace(
        OLLAMA_SLOTS["system"], system).replace(OLLAMA_SLOTS["user"], prompt)
