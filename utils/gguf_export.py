"""Write a merged transformers checkpoint as one GGUF file for llama.cpp: metadata, tokenizer, tensors."""
from pathlib import Path

from .adapters import read_record
from .card import base_license, hub_base_model
from .errors import PersonaLoraError

GGUF_TYPES = ("f16", "q8_0")


class ExportError(PersonaLoraError):
    """Packaging or export failed; the message says why and what to do, in one line."""


def gguf_architecture(config):
    """The gguf package's architecture for this model; only the Llama family is written (and tested) here."""
    import gguf

    supported = {"llama": gguf.MODEL_ARCH.LLAMA}
    if config.model_type not in supported:
        raise ExportError(f"GGUF export supports model_type {sorted(supported)} (Llama family: SmolLM2, Llama 2/3, "
                          f"TinyLlama), not {config.model_type!r} yet; llama.cpp's convert_hf_to_gguf.py covers more")
    return supported[config.model_type]


def permute_for_llama_cpp(weight, n_head: int):
    """llama.cpp's rotary embedding pairs neighbouring dimensions (0,1), (2,3), ... of each head, transformers' pairs
    the two halves (i, i + head_dim/2): reorder the q/k output rows to match (convert_hf_to_gguf.py does the same;
    transformers' GGUF loader undoes it)."""
    rows, rest = weight.shape[0], weight.shape[1:]
    return weight.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model_dir: Path, config, arch):
    """(GGUF name, float32 numpy array) for every weight of a saved transformers checkpoint."""
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():
                tensor = weights.get_tensor(name).float().numpy()
                if name.endswith("q_proj.weight"):
                    tensor = permute_for_llama_cpp(tensor, config.num_attention_heads)
                elif name.endswith("k_proj.weight"):
                    tensor = permute_for_llama_cpp(tensor, config.num_key_value_heads)
                yield names.get_name(name, try_suffixes=(".weight", ".bias")), tensor


def gguf_vocab(tokenizer, n_vocab: int):
    """Token strings (byte-level, as in tokenizer.json) and llama.cpp token types, by id."""
    from gguf import TokenType

    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        if i not in by_id:
            types.append(TokenType.UNUSED)
        elif i in added:
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
    return tokens, types


def llama_cpp_pre_tokenizer(model_dir: Path) -> str:
    """llama.cpp picks its text-splitting rules by name (convert_hf_to_gguf.py recognises a tokenizer by hashing how
    it encodes a test text). The series' models are SmolLM2s; other families need their name from that script."""
    record = read_record(model_dir)
    return "smollm" if "smollm" in hub_base_model(record).lower() else "default"


def export_gguf(model_dir, path, file_type: str = "f16") -> Path:
    """Write a saved transformers model folder as one GGUF file: metadata, tokenizer, then the tensors."""
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    if file_type not in GGUF_TYPES:
        raise ExportError(f"GGUF type {file_type!r} is not one of {list(GGUF_TYPES)}")
    model_dir, path = Path(model_dir), Path(path)
    config = AutoConfig.from_pretrained(model_dir)
    arch = gguf_architecture(config)
    quant = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[file_type]
    record = read_record(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])

    writer.add_name(record.get("persona", model_dir.name))
    writer.add_license(base_license(hub_base_model(record)))
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, hub_base_model(record))
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # The model's shape, under llama.cpp's key names.
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)

    # The tokenizer travels inside the file: vocabulary, merges, special ids, whether to add BOS, chat template.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens, types = gguf_vocab(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre(llama_cpp_pre_tokenizer(model_dir))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_add_bos_token(tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=config.vocab_size).add_to_gguf(writer, quiet=True)

    block_size, _ = gguf.GGML_QUANT_SIZES[quant]
    for name, tensor in gguf_tensors(model_dir, config, arch):
        # Like llama.cpp: 1-D tensors (the norms) stay float32; the rest in `quant`, q8_0 in blocks of 32 values.
        if tensor.ndim == 1 or tensor.shape[-1] % block_size:
            writer.add_tensor(name, tensor)
        else:
            writer.add_tensor(name, gguf.quantize(tensor, quant), raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
