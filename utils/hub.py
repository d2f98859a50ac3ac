"""Publish a prepared folder on the Hugging Face Hub, and see what an upload of it sends."""
from pathlib import Path

from .errors import PersonaLoraError


class HubError(PersonaLoraError):
    pass


def push_to_hub(folder, repo_id: str, private: bool = True) -> str:
    """Upload a prepared folder to a (private, by default) model repo, with the token from `hf auth login`."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload persona from persona-lora")
    except Exception as error:  # no network, no login, no write access: one line, not a traceback
        detail = " ".join(str(error).split())[:200]
        raise HubError(f"could not push {folder} to {repo_id}: {type(error).__name__}: {detail} "
                          "(log in with `hf auth login` and a write token; check the network)") from None
    return str(url)


def file_sizes(folder) -> dict[str, int]:
    """Bytes per file, by path inside `folder`: what an upload of it sends."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(Path(folder).rglob("*")) if p.is_file()}
