"""A bounded walk over a GGUF header, run before gguf-py's `GGUFReader` touches the file.

GGUF files come from strangers, so every length read from one is hostile (docs: reliability §1.2, §4.2).
`GGUFReader` trusts them: an array count of 2**60 past the end of the file makes it loop forever, and
truncated tensor data only shows up later as an odd reshape error. This walk reads nothing into memory
beyond a few bytes at a time, checks every count against the bytes actually left in the file, checks
tensor sizes and offsets against the data section, and raises `CorruptCheckpointError` with one sentence.
"""

import mmap
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType
from gguf.gguf_reader import ReaderField

from tameshi.errors import CorruptCheckpointError, ModelNotFoundError, UnsupportedModelError

MAX_KV = 100_000
MAX_TENSORS = 1_000_000
MAX_STRING_BYTES = 64 << 20  # llama.cpp allows 1 GiB; 64 MiB is ample for any chat template or tokenizer blob
MAX_ARRAY_DEPTH = 2
MAX_NAME_BYTES = 256
MAX_DIMS = 4
MAX_ALIGNMENT = 1 << 20
MAX_ELEMENTS = 1 << 48  # far above any real tensor, far below where sizes could stop meaning bytes

# On-disk size of each scalar value type (gguf.GGUFValueType ids); 8 is STRING, 9 is ARRAY.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # ggml order: dims[0] is the fastest-varying (torch's last) dimension
    qtype: GGMLQuantizationType
    offset: int  # from the start of the data section
    n_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    alignment: int
    data_offset: int
    tensors: tuple[TensorInfo, ...]


class _Corrupt(Exception):
    """Raised inside the walk; `check_header` turns it into one sentence naming the file."""


class _BigEndian(Exception):
    """gguf-py can byte-swap such files, but the dequantizers read little-endian scales."""


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def left(self) -> int:
        return len(self.buf) - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            raise _Corrupt(f"{what} runs past the end of the file at byte {self.pos}")

    def unpack(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        length = self.unpack("<Q", what)
        if length > limit:
            raise _Corrupt(f"{what} claims {length} bytes, over the limit of {limit}")
        self.need(length, what)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Corrupt(f"{what} is not valid UTF-8") from e


def _skip_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> None:
    if vtype in _SCALAR_SIZES:
        cur.need(_SCALAR_SIZES[vtype], f"value of {key!r}")
        cur.pos += _SCALAR_SIZES[vtype]
    elif vtype == _STRING:
        cur.string(f"value of {key!r}")
    elif vtype == _ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise _Corrupt(f"{key!r} nests arrays deeper than {MAX_ARRAY_DEPTH}")
        etype = cur.unpack("<I", f"array type of {key!r}")
        count = cur.unpack("<Q", f"array length of {key!r}")
        # Every element takes at least this many bytes, so the count can be checked before any loop.
        min_size = _SCALAR_SIZES.get(etype, 8 if etype in (_STRING, _ARRAY) else 1)
        if count * min_size > cur.left():
            raise _Corrupt(f"array {key!r} claims {count} elements, more than the file can hold")
        if etype in _SCALAR_SIZES:
            cur.pos += count * min_size
        else:
            for _ in range(count):
                _skip_value(cur, etype, key, depth + 1)
    else:
        raise _Corrupt(f"{key!r} has unknown value type {vtype}")


def _read_kv(cur: _Cursor, n_kv: int) -> int:
    """Walks the metadata; returns general.alignment (32 when absent)."""
    alignment = 32
    seen: set[str] = set()
    for _ in range(n_kv):
        key = cur.string("a metadata key", MAX_NAME_BYTES)
        if key in seen:
            raise _Corrupt(f"metadata key {key!r} appears twice")
        seen.add(key)
        vtype = cur.unpack("<I", f"type of {key!r}")
        if key == "general.alignment":
            if vtype != _UINT32:
                raise _Corrupt("general.alignment is not a uint32")
            alignment = cur.unpack("<I", "general.alignment")
            if alignment == 0 or alignment & (alignment - 1) or alignment > MAX_ALIGNMENT:
                raise _Corrupt(f"general.alignment {alignment} is not a power of two up to {MAX_ALIGNMENT}")
        else:
            _skip_value(cur, vtype, key)
    return alignment


def _read_tensor_info(cur: _Cursor, names: set[str]) -> TensorInfo:
    name = cur.string("a tensor name", MAX_NAME_BYTES)
    if name in names:
        raise _Corrupt(f"tensor {name!r} appears twice")
    names.add(name)
    n_dims = cur.unpack("<I", f"rank of {name!r}")
    if n_dims > MAX_DIMS:
        raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions, more than {MAX_DIMS}")
    dims = tuple(cur.unpack("<Q", f"shape of {name!r}") for _ in range(n_dims))
    raw_type = cur.unpack("<I", f"type of {name!r}")
    offset = cur.unpack("<Q", f"offset of {name!r}")
    try:
        qtype = GGMLQuantizationType(raw_type)
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError) as e:
        raise _Corrupt(f"tensor {name!r} has unknown ggml type {raw_type}") from e
    n_elems = 1
    for dim in dims:
        n_elems *= dim
        if n_elems > MAX_ELEMENTS:
            raise _Corrupt(f"tensor {name!r} has an impossible shape {dims}")
    if dims and dims[0] % block_elems != 0:
        raise _Corrupt(
            f"tensor {name!r} rows of {dims[0]} are not whole {qtype.name} blocks of {block_elems}"
        )
    return TensorInfo(name, dims, qtype, offset, n_elems // block_elems * block_bytes)


def _align(offset: int, alignment: int) -> int:
    return offset + (alignment - offset % alignment) % alignment


def _walk(cur: _Cursor) -> GGUFHeader:
    if cur.left() < 4 or cur.unpack("<I", "magic") != GGUF_MAGIC:
        raise _Corrupt("it does not start with the GGUF magic bytes")
    version = cur.unpack("<I", "version")
    if version & 0xFFFF == 0:
        raise _BigEndian
    if version not in (2, 3):
        raise _Corrupt(f"GGUF version {version} is not 2 or 3")
    n_tensors = cur.unpack("<Q", "tensor count")
    n_kv = cur.unpack("<Q", "metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise _Corrupt(f"it claims {n_tensors} tensors and {n_kv} metadata keys, over the limits")
    alignment = _read_kv(cur, n_kv)
    names: set[str] = set()
    tensors = tuple(_read_tensor_info(cur, names) for _ in range(n_tensors))
    data_offset = _align(cur.pos, alignment)
    data_size = len(cur.buf) - data_offset
    expected = 0
    for t in tensors:
        # llama.cpp requires each tensor to sit exactly where the previous one ends (padded); this is what
        # catches shapes whose byte size wrapped around in 64-bit arithmetic (ggml-org/llama.cpp#18674).
        if t.offset != expected:
            raise _Corrupt(f"tensor {t.name!r} starts at offset {t.offset}, expected {expected}")
        if t.offset + t.n_bytes > data_size:
            raise _Corrupt(f"tensor {t.name!r} ends past the end of the file")
        expected = _align(t.offset + t.n_bytes, alignment)
    return GGUFHeader(version, alignment, data_offset, tensors)


def check_header(path: Path) -> GGUFHeader:
    """Validates the header and tensor layout of the GGUF at `path`, reading it through a memory map."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                raise CorruptCheckpointError(f"{path} is empty, not a GGUF file.")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _walk(_Cursor(buf))
    except FileNotFoundError as e:
        raise ModelNotFoundError(f"{path} does not exist.") from e
    except _Corrupt as e:
        raise CorruptCheckpointError(f"{path} is not a valid GGUF file: {e}.") from e
    except _BigEndian as e:
        raise UnsupportedModelError(f"{path} is a big-endian GGUF file, which tameshi does not read.") from e


_INT_TYPES = {
    GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
    GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64,
}  # fmt: skip
_FLOAT_TYPES = {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}
_KINDS = {
    "int": _INT_TYPES,
    "float": _FLOAT_TYPES | _INT_TYPES,
    "str": {GGUFValueType.STRING},
    "bool": {GGUFValueType.BOOL},
}


class Metadata:
    """Typed reads of a GGUFReader's key/value fields: a value of the wrong type is a corrupt file, not
    something to coerce (type confusion in tokenizer arrays was a llama.cpp heap overflow)."""

    def __init__(self, fields: Mapping[str, ReaderField], path: Path) -> None:
        self._fields = fields
        self._path = path

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def _field(self, key: str, kind: str, array: bool) -> ReaderField:
        field = self._fields[key]
        types = field.types
        ok = (len(types) == 2 and types[0] == GGUFValueType.ARRAY) if array else len(types) == 1
        if not ok or types[-1] not in _KINDS[kind]:
            got = "/".join(t.name for t in types) or "nothing"
            want = f"array of {kind}" if array else kind
            raise CorruptCheckpointError(f"{self._path} has metadata {key} of type {got}, expected {want}.")
        return field

    def scalar(self, key: str, kind: str, default: Any = None) -> Any:
        """The value of `key` as kind "int", "float", "str" or "bool"; `default` when absent."""
        if key not in self._fields:
            return default
        value = self._field(key, kind, array=False).contents()
        if kind == "float":
            return float(value)
        return bool(value) if kind == "bool" else value

    def array(self, key: str, kind: str) -> list[Any] | None:
        """The array at `key` with elements of kind "int", "float" or "str"; None when absent."""
        if key not in self._fields:
            return None
        field = self._field(key, kind, array=True)
        if kind == "str":
            try:
                return field.contents()
            except UnicodeDecodeError as e:
                raise CorruptCheckpointError(f"{self._path} has non-UTF-8 text in metadata {key}.") from e
        # The numbers lie in one part each; concatenating the views avoids a Python object per element.
        parts = [field.parts[i] for i in field.data]
        return np.concatenate(parts).tolist() if parts else []
