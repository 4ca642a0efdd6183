"""HF-format checkpoint folders: config.json + model.safetensors, or shards with model.safetensors.index.json.

Weight names are HF's, unchanged (the modules in model.py carry HF's names). Loading is paranoid: the key
set and every shape are checked before any tensor is read, and errors list the offending names and shapes.
Pickled `.bin` checkpoints are read only through `torch.load(weights_only=True)`.
Writing goes through temporary names and renames, so a failed save leaves no half-written file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from jetmoe import dtypes
from jetmoe.config import CONFIG_NAME, JetMoeConfig
from jetmoe.errors import CheckpointError, ConfigError, InputError
from jetmoe.fileio import atomic_file, atomic_write_text
from jetmoe.log import progress

log = logging.getLogger(__name__)
JetMoePreTrainedModel = torch.nn.Module  # the models of jetmoe/model.py (not imported: it imports this module)

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
DEFAULT_SHARD_BYTES = 5 * 2**30
TIED_KEY = "lm_head.weight"
_LISTED = 12  # names shown in an error before "... and N more"



def resolve_dtype(dtype: object, config: JetMoeConfig) -> torch.dtype:
    """None: the dtype the checkpoint says it was saved in (config `dtype`), else fp32. Any spelling of
    fp32/fp16/bf16 (jetmoe/dtypes.py); ConfigError otherwise."""
    try:
        return dtypes.float_dtype(config.dtype or "fp32" if dtype is None else dtype).torch
    except InputError as e:
        raise ConfigError(str(e)) from None


# ---- loading ------------------------------------------------------------------------------------------


def load_model(cls: type[JetMoePreTrainedModel], directory: str | os.PathLike, dtype: object,
               device: torch.device | str, show_progress: bool) -> JetMoePreTrainedModel:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    config = JetMoeConfig.from_pretrained(directory)
    dtype = resolve_dtype(dtype, config)
    with torch.device("meta"):
        model = cls(config)
    files = verify(directory, cls, config)
    tied = _is_tied(model.state_dict(), config)
    state = {}
    wanted = set(model.state_dict()) - ({TIED_KEY} if tied else set())
    for name, tensor in progress(iter_tensors(files, wanted), f"loading {directory}", total=len(wanted),
                                 unit="tensor", logger=log, enabled=show_progress):
        state[name] = tensor.to(device=device, dtype=dtype)
    if tied:
        state[TIED_KEY] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def verify(directory: Path, cls: type[JetMoePreTrainedModel], config: JetMoeConfig) -> list[Path]:
    """The folder's weight files, after checking their key set and every shape against `cls(config)`."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in cls(config).state_dict().items()}
    tied = _is_tied(expected, config)
    if tied:
        del expected[TIED_KEY]
    files = _weight_files(directory)
    shapes = {name: shape for path in files for name, shape in _read_shapes(path).items()}
    _check_keys_and_shapes(directory, expected, shapes, optional={TIED_KEY} if tied else set())
    return files


def iter_tensors(files: list[Path], names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for the tensors in `names`, file by file, one tensor in memory at a time."""
    for path in files:
        for name, tensor in _read_tensors(path):
            if name in names:
                yield name, tensor


def _is_tied(state: dict, config: JetMoeConfig) -> bool:
    return config.tie_word_embeddings and TIED_KEY in state


def _weight_files(directory: Path) -> list[Path]:
    for index_name in (SAFETENSORS_INDEX_NAME, BIN_INDEX_NAME):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index} is not a valid shard index ({e!r})") from None
            files = [directory / name for name in sorted(set(weight_map.values()))]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} names shard files that do not exist: {missing}")
            return files
    for name in (SAFETENSORS_NAME, BIN_NAME):
        if (directory / name).is_file():
            return [directory / name]
    present = sorted(p.name for p in directory.iterdir())
    raise CheckpointError(f"no weights in {directory}: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME}, "
                          f"{BIN_NAME} or {BIN_INDEX_NAME}; found {present}")


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        return {name: tuple(entry["shape"]) for name, entry in _safetensors_header(path)[0].items()}
    return {name: tuple(t.shape) for name, t in _load_bin(path).items()}


def _read_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors one at a time. Safetensors files are read, not memory-mapped: a mapping would keep every page
    touched so far resident, so loading (or exporting) a checkpoint would hold the whole file in memory."""
    if path.suffix != ".safetensors":
        yield from _load_bin(path).items()
        return
    header, data_start = _safetensors_header(path)
    with open(path, "rb") as f:
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = entry["data_offsets"]
            f.seek(data_start + begin)
            buffer = bytearray(end - begin)
            if f.readinto(buffer) != len(buffer):
                raise CheckpointError(f"{path} is truncated inside tensor {name}")
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            tensor = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
            yield name, tensor.reshape(entry["shape"])


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_header(path: Path) -> tuple[dict[str, dict], int]:
    """The tensor entries of a safetensors file and where its data starts, after checking they fit the file."""
    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {why}")

    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise corrupt(f"{size} bytes is too short for a header")
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            raise corrupt(f"header of {length} bytes does not fit in a {size}-byte file")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise corrupt(f"header is not JSON ({e})") from None
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    for name, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            itemsize = _SAFETENSORS_DTYPES[entry["dtype"]].itemsize
            numel = 1
            for dim in entry["shape"]:
                numel *= dim
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(f"bad entry for {name}: {e!r}") from None
        if not 0 <= begin <= end <= data_size or end - begin != numel * itemsize:
            raise corrupt(f"tensor {name} spans bytes {begin}..{end} of {data_size} data bytes")
    return header, 8 + length


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch.load raises many types for a bad pickle; all mean the same to the user
        raise CheckpointError(f"{path} is not a loadable weights-only PyTorch checkpoint: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return state


def _check_keys_and_shapes(directory: Path, expected: dict[str, tuple[int, ...]],
                           found: dict[str, tuple[int, ...]], optional: set[str]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - optional)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    wrong = [f"{name}: expected {list(expected[name])}, found {list(found[name])}"
             for name in sorted(set(expected) & set(found)) if expected[name] != found[name]]
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {_listing(wrong)}")
    if problems:
        raise CheckpointError(f"checkpoint {directory} does not match its config.json: " + "; ".join(problems))


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown if len(items) <= _LISTED else f"{shown}, ... and {len(items) - _LISTED} more"


# ---- saving -------------------------------------------------------------------------------------------


def save_model(model: JetMoePreTrainedModel, directory: str | os.PathLike, max_shard_size: int) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop(TIED_KEY, None)
    shards = _shard(state, max_shard_size)

    written = []
    if len(shards) == 1:
        _atomic_save_tensors(shards[0], directory / SAFETENSORS_NAME)
        written.append(SAFETENSORS_NAME)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic_save_tensors(shard, directory / name)
            weight_map.update(dict.fromkeys(shard, name))
            written.append(name)
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(directory / SAFETENSORS_INDEX_NAME, json.dumps(index, indent=2) + "\n")
        written.append(SAFETENSORS_INDEX_NAME)

    config = model.config.replace(dtype=str(model.dtype).removeprefix("torch."))
    raw = {"architectures": [type(model).__name__], **config.to_dict()}
    atomic_write_text(directory / CONFIG_NAME, json.dumps(raw, indent=2, sort_keys=True) + "\n")
    # weights of an earlier save in another layout would shadow (or mix with) these
    for stale in directory.iterdir():
        if stale.name not in written and _is_weight_file(stale.name):
            stale.unlink()


def _is_weight_file(name: str) -> bool:
    return name in (SAFETENSORS_INDEX_NAME, BIN_INDEX_NAME, BIN_NAME) or (
        name.startswith(("model", "pytorch_model")) and name.endswith((".safetensors", ".bin")))


def _shard(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
