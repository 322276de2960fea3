"""Model name -> local folder or file: a path, the embedded default, or a hub id in the local HF cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tameshi.errors import ModelNotFoundError

GGUF_MAGIC = b"GGUF"
SYNTH_SCHEME = "synth:"  # `synth:PRESET[:awq]`: random weights drawn in memory (quantize/synth.py)


@dataclass(frozen=True)
class ModelSource:
    path: Path
    kind: str  # "hf-folder" | "gguf" | "synth" (random weights drawn in memory; path holds the name)
    origin: str  # how it was found, for `tameshi info`


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def resolve(name: str | Path | None) -> ModelSource:
    if name is None:
        from tameshi.loading.default import DEFAULT_MODEL_NAME, default_model_dir

        return ModelSource(default_model_dir(), "hf-folder", f"embedded default ({DEFAULT_MODEL_NAME})")
    if str(name).startswith(SYNTH_SCHEME):
        from tameshi.quantize.synth import InMemorySynth

        InMemorySynth.parse(str(name))  # an unknown preset is reported here
        return ModelSource(Path(name), "synth", "random weights drawn in memory (tameshi synth's shapes)")
    path = Path(name).expanduser()
    if path.is_file():
        if not is_gguf(path):
            raise ModelNotFoundError(
                f"{path} is a file but not a GGUF model (give a GGUF file or a model folder)"
            )
        return ModelSource(path, "gguf", "GGUF file")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json; is it a Hugging Face model folder?")
        return ModelSource(path, "hf-folder", "local folder")
    if _looks_like_path(str(name)):
        raise ModelNotFoundError(f"no such file or folder: {path}")
    return ModelSource(_from_hub_cache(str(name)), "hf-folder", "Hugging Face cache")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        # Offline first: tameshi never downloads behind the user's back.
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{repo_id} is not in the local Hugging Face cache; download it first with "
            f"`hf download {repo_id}` (or pass a local folder or .gguf file)"
        ) from None
    except HFValidationError:
        raise ModelNotFoundError(
            f"{repo_id!r} is neither a local path nor a valid Hugging Face model id"
        ) from None
