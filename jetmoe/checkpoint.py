"""HF-format checkpoint folders: config.json + model.safetensors, or shards with model.safetensors.index.json.

Weight names are HF's, unchanged (the modules in model.py carry HF's names). Loading is paranoid: the key
set and every shape are checked before any tensor is read, and errors list the offending names and shapes.
Pickled `.bin` checkpoints are read only through `torch.load(weights_only=True)`.
Writing goes through temporary names and renames, so a failed save leaves no half-written file. A checkpoint too
big for memory is written tensor by tensor (`SafetensorsWriter`, with `plan_shards`, `shard_file_names` and
`write_shard_index` laying it out as `save_model` does: jetmoe/random_weights.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from jetmoe import dtypes
from jetmoe.config import CONFIG_NAME, JetMoeConfig
from jetmoe.errors import CheckpointError, ConfigError, InputError, InternalError, OutputError
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
    weights = verify(directory, cls, config)
    tied = lm_head_tied(weights, config)
    with torch.device("meta"):
        model = cls(config if tied or not config.tie_word_embeddings else config.replace(tie_word_embeddings=False))
    wanted = set(model.state_dict()) - ({TIED_KEY} if tied and TIED_KEY in model.state_dict() else set())
    state = {}
    for name, tensor in progress(iter_tensors(weights, wanted), f"loading {directory}", total=len(wanted),
                                 unit="tensor", logger=log, enabled=show_progress):
        state[name] = tensor.to(device=device, dtype=dtype)
    if tied and TIED_KEY in model.state_dict():
        state[TIED_KEY] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied and TIED_KEY in model.state_dict():
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()  # an untied lm_head leaves model.config.tie_word_embeddings False, so a save keeps it


@dataclasses.dataclass(frozen=True)
class WeightFiles:
    """A checkpoint's weights, verified: which file holds each tensor (the shard index's assignment, or the one
    weights file), and whether an lm_head.weight is stored beside embeddings the config ties."""

    directory: Path
    where: dict[str, Path]  # tensor name -> file
    stored_lm_head: bool

    @property
    def files(self) -> list[Path]:
        return sorted(set(self.where.values()))


def verify(directory: Path, cls: type[JetMoePreTrainedModel], config: JetMoeConfig) -> WeightFiles:
    """Check the folder's key set and every shape against `cls(config)` before any tensor is read; a tensor a
    shard holds although the index assigns it elsewhere is ignored (with a warning), as HF does; weights stored
    in another float type than config.json's `dtype` get a warning (they are cast on loading)."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in cls(config).state_dict().items()}
    tied = _is_tied(expected, config)
    if tied:
        del expected[TIED_KEY]
    where, shapes, stored_types = _assigned_tensors(directory)
    _check_keys_and_shapes(directory, expected, shapes, optional={TIED_KEY} if tied else set())
    floats = {t for name, t in stored_types.items() if name in shapes and t in _FLOAT_NAMES}
    if config.dtype and floats and floats != {_FLOAT_NAMES_OF[config.dtype]}:
        log.warning("%s: weights are stored as %s but config.json says dtype %s; they are cast to the dtype "
                    "asked for on loading", directory, "/".join(sorted(floats)), config.dtype)
    return WeightFiles(directory, where, tied and TIED_KEY in shapes)


def lm_head_tied(weights: WeightFiles, config: JetMoeConfig) -> bool:
    """Whether lm_head shares the embeddings. A stored lm_head.weight that differs from the embeddings under
    tie_word_embeddings=true is kept, untied, with a warning (HF transformers 5.x does the same); an equal one
    (HF's own saves of tied models may include it) changes nothing."""
    if not config.tie_word_embeddings:
        return False
    if not weights.stored_lm_head:
        return True
    pair = dict(iter_tensors(weights, {TIED_KEY, "model.embed_tokens.weight"}))
    if torch.equal(pair[TIED_KEY], pair["model.embed_tokens.weight"]):
        return True
    log.warning("%s: lm_head.weight differs from model.embed_tokens.weight although config.json sets "
                "tie_word_embeddings=true; keeping lm_head untied (as HF transformers does)", weights.directory)
    return False


def iter_tensors(weights: WeightFiles, names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for the tensors in `names`, file by file, one tensor in memory at a time, each read from
    the file the index assigns it to; the bytes of other tensors are never read (a layer of jetmoe-8b reads its
    0.7 GB, not the 17 GB checkpoint). CheckpointError for a tensor holding NaN or infinity."""
    for path in weights.files:
        assigned = {name for name in names if weights.where.get(name) == path}
        if not assigned:
            continue
        for name, tensor in _read_tensors(path, assigned):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise CheckpointError(f"{path}: tensor {name} holds {bad} NaN or infinite value(s)")
            yield name, tensor


def _is_tied(state: dict, config: JetMoeConfig) -> bool:
    return config.tie_word_embeddings and TIED_KEY in state


def _assigned_tensors(directory: Path) -> tuple[dict[str, Path], dict[str, tuple[int, ...]], dict[str, str]]:
    """(tensor -> file, tensor -> shape, tensor -> stored type name) over the folder's weight files."""
    where, shapes, types, duplicates = {}, {}, {}, []
    index, files = _weight_files(directory)
    for path in files:
        for name, (shape, kind) in _read_entries(path).items():
            assigned = index.get(name, path) if index is not None else path
            if assigned != path:
                duplicates.append(f"{name} in {path.name}")
                continue
            if name in where:
                raise CheckpointError(f"{directory}: tensor {name} is stored twice ({where[name].name} and "
                                      f"{path.name})")
            where[name], shapes[name], types[name] = path, shape, kind
    if index is not None:
        unlisted = sorted(set(index) - set(where))
        if unlisted:
            raise CheckpointError(f"{directory}: the shard index assigns tensors their shard does not hold: "
                                  f"{_listing([f'{n} ({index[n].name})' for n in unlisted])}")
    if duplicates:
        log.warning("%s: ignoring tensors stored in a shard the index does not assign them to: %s", directory,
                    _listing(duplicates))
    return where, shapes, types


def _weight_files(directory: Path) -> tuple[dict[str, Path] | None, list[Path]]:
    """(the shard index's tensor -> file map, or None without an index; the weight files)."""
    for index_name in (SAFETENSORS_INDEX_NAME, BIN_INDEX_NAME):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                assigned = {name: directory / file for name, file in weight_map.items()}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{index} is not a valid shard index ({e!r})") from None
            files = sorted(set(assigned.values()))
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} names shard files that do not exist: {missing}")
            return assigned, files
    for name in (SAFETENSORS_NAME, BIN_NAME):
        if (directory / name).is_file():
            return None, [directory / name]
    present = sorted(p.name for p in directory.iterdir())
    raise CheckpointError(f"no weights in {directory}: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME}, "
                          f"{BIN_NAME} or {BIN_INDEX_NAME}; found {present}")


def _read_entries(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, stored type: F32/F16/BF16/...) without reading any tensor data (safetensors)."""
    if path.suffix == ".safetensors":
        return {name: (tuple(e["shape"]), e["dtype"]) for name, e in _safetensors_header(path)[0].items()}
    return {name: (tuple(t.shape), _TYPE_NAMES.get(t.dtype, str(t.dtype))) for name, t in _load_bin(path).items()}


def _read_tensors(path: Path, names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors in `names`, one at a time, in file order; the others' bytes are not read. Safetensors files
    are read, not memory-mapped: a mapping would keep every page touched so far resident, so loading (or
    exporting) a checkpoint would hold the whole file in memory."""
    if path.suffix != ".safetensors":
        yield from ((name, t) for name, t in _load_bin(path).items() if name in names)
        return
    header, data_start = _safetensors_header(path)
    entries = [item for item in header.items() if item[0] in names]
    with open(path, "rb") as f:
        for name, entry in sorted(entries, key=lambda item: item[1]["data_offsets"][0]):
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
_TYPE_NAMES = {t: name for name, t in _SAFETENSORS_DTYPES.items()}
_FLOAT_NAMES = ("F32", "F16", "BF16")
_FLOAT_NAMES_OF = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # config.json dtype -> stored type


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

    names = shard_file_names(len(shards))
    for shard, name in zip(shards, names, strict=True):
        _atomic_save_tensors(shard, directory / name)
    written = list(names)
    if len(shards) > 1:
        write_shard_index(directory, {key: name for shard, name in zip(shards, names, strict=True) for key in shard},
                          sum(t.numel() * t.element_size() for t in state.values()))
        written.append(SAFETENSORS_INDEX_NAME)

    config = model.config.replace(dtype=dtypes.dtype(model.dtype).hf_name)
    raw = {"architectures": [type(model).__name__], **config.to_dict()}
    atomic_write_text(directory / CONFIG_NAME, json.dumps(raw, indent=2, sort_keys=True) + "\n")
    # weights of an earlier save in another layout would shadow (or mix with) these
    for stale in directory.iterdir():
        if stale.name not in written and _is_weight_file(stale.name):
            stale.unlink()


def other_than_checkpoint(folder: Path) -> str | None:
    """The output rule's `owned` check for checkpoint folders (jetmoe/fileio.check_output): None when `folder`
    holds checkpoint weights; else what its config.json belongs to (an export folder has one too)."""
    if any(_is_weight_file(p.name) for p in folder.iterdir()):
        return None
    return "a config.json without checkpoint weights (an ONNX export folder?)"


def _is_weight_file(name: str) -> bool:
    return name in (SAFETENSORS_INDEX_NAME, BIN_INDEX_NAME, BIN_NAME) or (
        name.startswith(("model", "pytorch_model")) and name.endswith((".safetensors", ".bin")))


def _shard(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    plan = plan_shards([(name, t.numel() * t.element_size()) for name, t in state.items()], max_bytes)
    return [{name: state[name] for name in names} for names in plan]


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in order (HF's greedy rule): a shard is closed before the tensor that would take it
    past max_bytes; a tensor larger than max_bytes gets a shard of its own."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sizes:
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    """HF's names: model.safetensors alone, else model-00001-of-0000N.safetensors, ..."""
    if count == 1:
        return [SAFETENSORS_NAME]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_shard_index(directory: Path, weight_map: dict[str, str], total_size: int) -> None:
    """model.safetensors.index.json: total bytes of the tensors and the shard of each, names sorted (as HF)."""
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    atomic_write_text(directory / SAFETENSORS_INDEX_NAME, json.dumps(index, indent=2) + "\n")


class SafetensorsWriter:
    """A safetensors file written tensor by tensor, never whole in memory: the header first (every name, dtype and
    shape is known in advance), then each tensor's bytes in header order, in as many pieces as wanted.

        with SafetensorsWriter(path, [("w", torch.bfloat16, (4, 8))]) as out:
            out.write(piece)   # contiguous pieces of the declared dtype, 32 elements in all

    The file is the `safetensors` library's own layout (8-byte header length, JSON header padded with spaces to
    8 bytes, metadata {"format": "pt"}, data in header order). Write it inside an atomic folder or file: a failed
    write leaves a partial file behind. Pieces that do not add up to the declared tensors are a bug
    (InternalError).
    """

    def __init__(self, path: str | os.PathLike, tensors: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> None:
        self.path = Path(path)
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        self._sizes: list[tuple[str, torch.dtype, int]] = []
        offset = 0
        for name, dtype, shape in tensors:
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": _TYPE_NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            self._sizes.append((name, dtype, nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        self._header = raw + b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors pads it
        self._tensor, self._left = -1, 0
        self._file = None

    def __enter__(self) -> SafetensorsWriter:
        self._file = open(self.path, "wb")  # closed in __exit__
        self._file.write(len(self._header).to_bytes(8, "little") + self._header)
        self._next_tensor()
        return self

    def write(self, piece: torch.Tensor) -> None:
        """The next bytes of the current tensor (then of the following ones): a contiguous CPU tensor."""
        done = self._tensor >= len(self._sizes)
        name, dtype, _ = ("(none left)", None, 0) if done else self._sizes[self._tensor]
        nbytes = piece.numel() * piece.element_size()
        if piece.dtype != dtype or nbytes > self._left:
            raise InternalError(f"{self.path}: got {nbytes} bytes of {piece.dtype} for tensor {name} ({dtype}, "
                                f"{self._left} bytes left)")
        self._file.write(piece.contiguous().view(torch.uint8).reshape(-1).numpy().data)
        self._left -= nbytes
        if not self._left:
            self._next_tensor()

    def _next_tensor(self) -> None:
        self._tensor += 1
        while self._tensor < len(self._sizes) and self._sizes[self._tensor][2] == 0:  # empty tensors: no bytes
            self._tensor += 1
        self._left = self._sizes[self._tensor][2] if self._tensor < len(self._sizes) else 0

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None and self._tensor < len(self._sizes):
            raise InternalError(f"{self.path}: tensor {self._sizes[self._tensor][0]} and the ones after it were "
                                f"not written ({self._left} bytes short in it)")


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_file(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        except SafetensorError as e:  # safetensors reports I/O errors (disk full) as its own type
            reason = "no space left on the device" if "os error 28" in str(e) else str(e)
            raise OutputError(f"could not write {path}: {reason}") from None
