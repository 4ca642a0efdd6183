"""TrtRunner's bookkeeping on a CPU: a context per profile in one shared memory block, every address checked, value
semantics, I/O by name, CUDA graphs (capture, replay, failure, LRU) and the input checks, against a stand-in
TensorRT (`FakeEngine`, `FakeContext`) and stand-in CUDA (`FakeCuda`, put in place of engines.runtime._Cuda).

The stand-in engine runs a made-up network on the memory at the addresses it was given (ctypes over CPU tensors):
a graph "captured" on a stream records that work and replays it on the addresses bound at capture time, so a
replay that forgot to copy its feeds, or an output aliasing a static buffer, shows up as wrong numbers. The real
engine is tests/engines/test_trt_engine.py (marker `trt`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import math
import types

import pytest
import torch
from test_manifest import make_manifest
from torch import Tensor

from engines import flavour, runtime
from engines.manifest import write_manifest
from engines.runtime import TrtRunner
from jetmoe.errors import EngineError, InputError
from jetmoe.generate import generate
from jetmoe.runner import Runner

MANIFEST = make_manifest(dispatch="portable", plugins={}, plugin_mode="none", dtype="fp32")
CONFIG = MANIFEST.model_config
NAMES = MANIFEST.io_names
V, H, Dh = CONFIG.vocab_size, CONFIG.num_key_value_heads, CONFIG.kv_channels
MEMORY_SIZES = (4099, 9001)  # device memory per profile (prefill, decode): the shared block takes the larger

# (batch, new tokens, cached tokens): 1 token, odd and prime sizes; P = 0 is prefill, S = 1 with P > 0 decode
PREFILL = [(1, 1, 0), (2, 5, 0), (2, 13, 0)]
DECODE = [(1, 1, 3), (2, 1, 7), (2, 1, 11)]


# ---- the made-up network the stand-in engine runs ----------------------------------------------------------------


def network(x: dict[str, Tensor]) -> dict[str, Tensor]:
    """logits [B, S, V] peaking at (id + position + cached tokens' last key + mask sum) mod V; present = past + new."""
    ids, mask, pos = x["input_ids"], x["attention_mask"], x["position_ids"]
    B, S = ids.shape
    past = x[NAMES.past[0][0]]
    last = past[:, 0, -1, 0].long() if past.shape[2] else torch.zeros(B, dtype=torch.long)
    target = (ids + pos + last[:, None] + mask.sum(1, keepdim=True)) % V  # [B, S]
    out = {"logits": -(torch.arange(V) - target[..., None]).abs().float()}  # [B, S, V]
    for layer, ((pk, pv), (k, v)) in enumerate(zip(NAMES.past, NAMES.present, strict=True)):
        new = (ids + layer).float()[:, None, :, None].expand(B, H, S, Dh)  # [B, H, S, Dh]
        out[k], out[v] = torch.cat([x[pk], new], 2), torch.cat([x[pv], -new], 2)
    return out


def output_shapes(shapes: dict[str, tuple]) -> dict[str, tuple]:
    B, S = shapes["input_ids"]
    P = shapes[NAMES.past[0][0]][2]
    return {"logits": (B, S, V)} | {n: (B, H, P + S, Dh) for pair in NAMES.present for n in pair}


def feeds(B: int, S: int, P: int, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = {"input_ids": torch.randint(0, V, (B, S), generator=g),
         "attention_mask": torch.ones(B, P + S, dtype=torch.long), "position_ids": (P + torch.arange(S)).repeat(B, 1)}
    for pair in NAMES.past:
        for name in pair:
            x[name] = torch.randint(0, 50, (B, H, P, Dh), generator=g).float()
    return x


def at(address: int, shape: tuple, dtype: torch.dtype) -> Tensor:
    """The CPU memory at `address` as a tensor (what a TensorRT kernel sees at a bound address)."""
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(address)
    return torch.frombuffer(raw, dtype=dtype, count=count).view(shape)


def same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- stand-in TensorRT -------------------------------------------------------------------------------------------


INPUT, OUTPUT = "INPUT", "OUTPUT"
FLOAT, INT64 = types.SimpleNamespace(name="FLOAT"), types.SimpleNamespace(name="INT64")  # tensorrt.DataType members
TORCH = {"FLOAT": torch.float32, "INT64": torch.int64}
USER_MANAGED = "USER_MANAGED"


class FakeContext:
    def __init__(self, world: World, index: int, strategy) -> None:
        self.world, self.engine, self.index, self.strategy = world, world.engine, index, strategy
        self.memory: tuple[int, int] | None = None
        self.profile: int | None = None
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.calls: list[tuple[str, tuple]] = []

    def _record(self, method: str, *args) -> None:
        self.calls.append((method, args))
        self.world.log.append((f"ctx{self.index}", method, args))

    def count(self, method: str) -> int:
        return sum(m == method for m, _ in self.calls)

    def set_device_memory(self, address: int, size: int) -> None:
        self._record("set_device_memory", address, size)
        self.memory = (address, size)

    def set_optimization_profile_async(self, profile: int, stream: int) -> bool:
        self._record("set_optimization_profile_async", profile, stream)
        self.profile = profile
        return True

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self._record("set_input_shape", name, tuple(shape))
        lo, _, hi = self.world.manifest.profiles[self.profile].shapes[name]
        if name in self.engine.refuse or not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self._record("set_tensor_address", name, address)
        if name in self.engine.refuse or address == 0 or name not in self.engine.modes:
            return False
        self.addresses[name] = address
        return True

    def infer_shapes(self) -> list[str]:
        self._record("infer_shapes")
        return [n for n in self.engine.inputs if n not in self.shapes]

    def get_tensor_shape(self, name: str) -> tuple:
        self._record("get_tensor_shape", name)
        return self.shapes[name] if name in self.shapes else output_shapes(self.shapes)[name]

    def execute_async_v3(self, stream: int) -> bool:
        graph = self.world.streams[stream].capturing
        self._record("execute_async_v3", stream, graph is not None)
        if self.engine.execute_fails(self, graph is not None):
            return False
        # what TensorRT needs before an enqueue; a miss is a bug in the runner, not a refusal to test
        assert self.memory is not None and self.memory[1] >= MEMORY_SIZES[self.profile], (self.index, self.memory)
        assert set(self.addresses) == set(self.engine.modes), sorted(set(self.engine.modes) - set(self.addresses))
        work = functools.partial(self._run, dict(self.addresses), dict(self.shapes))
        if graph is None:
            work()
        else:
            graph.work.append(work)
        return True

    def _run(self, addresses: dict[str, int], shapes: dict[str, tuple]) -> None:
        x = {n: at(addresses[n], shapes[n], TORCH[self.engine.dtypes[n].name]) for n in self.engine.inputs}
        for name, value in network(x).items():
            at(addresses[name], tuple(value.shape), value.dtype).copy_(value)


class FakeEngine:
    def __init__(self, world: World, inputs: list[str], outputs: list[str], order: str) -> None:
        self.world, self.inputs = world, inputs
        self.modes = {n: INPUT for n in inputs} | {n: OUTPUT for n in outputs}
        self.names = list(self.modes)[::-1] if order == "reversed" else list(self.modes)
        self.dtypes = {n: INT64 if n in ("input_ids", "attention_mask", "position_ids") else FLOAT for n in self.names}
        self.contexts: list[FakeContext] = []
        self.refuse: set[str] = set()  # names whose set_input_shape / set_tensor_address return False
        self.execute_fails = lambda context, capturing: False

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return self.modes[name]

    def get_tensor_dtype(self, name: str) -> types.SimpleNamespace:
        return self.dtypes[name]

    def get_device_memory_size_for_profile_v2(self, profile: int) -> int:
        return MEMORY_SIZES[profile]

    def create_execution_context(self, strategy) -> FakeContext:
        context = FakeContext(self.world, len(self.contexts), strategy)
        self.contexts.append(context)
        return context

    def executes(self) -> int:
        return sum(c.count("execute_async_v3") for c in self.contexts)


# ---- stand-in CUDA -----------------------------------------------------------------------------------------------


class FakeStream:
    def __init__(self, world: World, name: str) -> None:
        self.world, self.name = world, name
        self.cuda_stream = 1000 + len(world.streams)
        self.capturing: FakeGraph | None = None
        world.streams[self.cuda_stream] = self

    def wait_stream(self, other: FakeStream) -> None:
        self.world.log.append(("cuda", "wait_stream", (self.name, other.name)))

    def synchronize(self) -> None:
        self.world.log.append(("cuda", "synchronize", (self.name,)))


class FakeGraph:
    def __init__(self, world: World) -> None:
        self.world = world
        self.work: list = []
        self.stream: FakeStream | None = None
        self.replays = 0

    def replay(self) -> None:
        assert self.world.current is self.stream, "a graph is replayed on the stream it was captured on"
        self.world.log.append(("cuda", "replay", ()))
        self.replays += 1
        for work in self.work:
            work()


class FakeCuda:
    """engines.runtime._Cuda on a CPU: streams and graphs that record what is done with them."""

    def __init__(self, world: World) -> None:
        self.world = world

    def device(self) -> torch.device:
        return torch.device("cpu")

    def stream(self, device: torch.device) -> FakeStream:
        return FakeStream(self.world, "runner")

    def current_stream(self, device: torch.device) -> FakeStream:
        return self.world.current

    @contextlib.contextmanager
    def on_device(self, device: torch.device):
        assert device == torch.device("cpu")
        yield

    @contextlib.contextmanager
    def use_stream(self, stream: FakeStream):
        before, self.world.current = self.world.current, stream
        try:
            yield
        finally:
            self.world.current = before

    def graph(self) -> FakeGraph:
        graph = FakeGraph(self.world)
        self.world.graphs.append(graph)
        return graph

    @contextlib.contextmanager
    def capture(self, graph: FakeGraph, stream: FakeStream, capture_error_mode: str):
        self.world.log.append(("cuda", "capture_begin", (stream.name, capture_error_mode)))
        graph.stream, stream.capturing = stream, graph
        with self.use_stream(stream):
            try:
                yield
            finally:
                stream.capturing = None
                self.world.log.append(("cuda", "capture_end", ()))
        if self.world.capture_error:
            raise RuntimeError(self.world.capture_error)


# ---- the world a test runs in ------------------------------------------------------------------------------------


class World:
    def __init__(self, path, manifest) -> None:
        self.path, self.manifest = path, manifest
        self.log: list[tuple[str, str, tuple]] = []
        self.streams: dict[int, FakeStream] = {}
        self.current = FakeStream(self, "default")
        self.graphs: list[FakeGraph] = []
        self.capture_error = ""
        self.engine_inputs, self.engine_outputs = list(manifest.io_names.inputs), list(manifest.io_names.outputs)
        self.engine_order = "as listed"
        self.engine: FakeEngine | None = None
        self.trt = self._tensorrt()

    def _tensorrt(self) -> types.SimpleNamespace:
        world = self

        class Logger:
            VERBOSE, WARNING = "VERBOSE", "WARNING"

            def __init__(self, severity) -> None:
                self.severity = severity

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
                if plan != b"fake plan":
                    return None
                world.engine = FakeEngine(world, world.engine_inputs, world.engine_outputs, world.engine_order)
                return world.engine

        return types.SimpleNamespace(
            __version__=self.manifest.tensorrt_version, Logger=Logger, Runtime=Runtime,
            TensorIOMode=types.SimpleNamespace(INPUT=INPUT, OUTPUT=OUTPUT),
            ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED=USER_MANAGED))

    def calls(self, method: str) -> list[tuple[str, tuple]]:
        return [(who, args) for who, m, args in self.log if m == method]


@pytest.fixture
def world(tmp_path, monkeypatch) -> World:
    path = tmp_path / "model.engine"
    path.write_bytes(b"fake plan")
    write_manifest(path, MANIFEST)
    world = World(path, MANIFEST)

    def import_tensorrt(name):
        assert name == "tensorrt"
        return world.trt

    monkeypatch.setattr(flavour, "import_tensorrt", import_tensorrt)
    monkeypatch.setattr(flavour, "require_cuda_gpu", lambda: ("NVIDIA H200", (9, 0)))
    monkeypatch.setattr(runtime, "_Cuda", functools.partial(FakeCuda, world))
    return world


class NetworkRunner(Runner):
    """The made-up network behind the runner contract, without TensorRT: the oracle of generation."""

    def activate_impl(self) -> None:
        self.config, self.io_names, self.name = CONFIG, NAMES, "network"

    def infer_impl(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        return network(feeds)


# ---- contexts, memory, profiles ----------------------------------------------------------------------------------


def test_one_context_per_profile_in_one_shared_memory_block(world):
    with TrtRunner(world.path) as runner:
        engine = world.engine
        prefill, decode = engine.contexts
        memory = (runner._memory.data_ptr(), runner._memory.numel())
        assert runner._memory.numel() == max(MEMORY_SIZES) and runner._memory.dtype == torch.uint8
        for profile, context in enumerate(engine.contexts):
            assert context.strategy == USER_MANAGED
            assert context.calls[:2] == [("set_device_memory", memory),
                                         ("set_optimization_profile_async", (profile, runner.stream.cuda_stream))]
        for i, (B, S, P) in enumerate(PREFILL + DECODE + PREFILL[:1]):
            x = feeds(B, S, P, seed=i)
            runs = (prefill.count("execute_async_v3"), decode.count("execute_async_v3"))
            assert same(runner.infer(x), network(x)), (B, S, P)
            on_prefill = P == 0
            assert (prefill.count("execute_async_v3"), decode.count("execute_async_v3")) == (
                runs[0] + on_prefill, runs[1] + (not on_prefill)), (B, S, P)
            assert world.log[-1] == ("cuda", "synchronize", ("runner",))  # synchronised before returning
        assert len(engine.contexts) == 2
        for profile, context in enumerate(engine.contexts):  # bound once, at activation: never switched
            assert context.count("set_optimization_profile_async") == 1 and context.profile == profile
            assert context.count("set_device_memory") == 1 and context.memory == memory


def test_the_stream_waits_for_the_callers_then_syncs(world):
    with TrtRunner(world.path) as runner:
        start = len(world.log)
        runner.infer(feeds(*PREFILL[1]))
        steps = [(who, m) for who, m, _ in world.log[start:] if who == "cuda" or m == "execute_async_v3"]
        assert steps == [("cuda", "wait_stream"), ("ctx0", "execute_async_v3"), ("cuda", "synchronize")]


# ---- addresses and their checks ----------------------------------------------------------------------------------


def test_every_address_is_set_and_empty_tensors_get_a_placeholder(world):
    with TrtRunner(world.path) as runner:
        x = feeds(*PREFILL[1])
        runner.infer(x)
        context = world.engine.contexts[0]
        assert set(context.addresses) == set(NAMES.inputs + NAMES.outputs)
        # the empty cache feeds [2, H, 0, Dh] have no memory (address 0, refused): they got a placeholder's
        assert all(x[n].data_ptr() == 0 for pair in NAMES.past for n in pair)
        assert all(address != 0 for address in context.addresses.values())
        assert {args[0]: args[1] for m, args in context.calls if m == "set_input_shape"} == {
            n: tuple(t.shape) for n, t in x.items()}
        assert context.addresses["input_ids"] == x["input_ids"].data_ptr()  # read in place, never written


@pytest.mark.parametrize("refused, error, message", [
    ("present.1.value", EngineError, r"TensorRT refused the address of present\.1\.value"),
    ("logits", EngineError, r"TensorRT refused the address of logits"),
    ("attention_mask", InputError, r"the engine refused shape \(2, 5\) for input attention_mask"),
])
def test_a_refused_shape_or_address_is_a_clear_error(world, refused, error, message):
    with TrtRunner(world.path) as runner:
        world.engine.refuse.add(refused)
        with pytest.raises(error, match=message):
            runner.infer(feeds(*PREFILL[1]))
        assert world.engine.executes() == 0


def test_a_failed_enqueue_is_an_engine_error(world):
    with TrtRunner(world.path) as runner:
        world.engine.execute_fails = lambda context, capturing: True
        with pytest.raises(EngineError, match=r"TensorRT failed to run .*model\.engine on shapes .*input_ids"):
            runner.infer(feeds(*DECODE[0]))


# ---- value semantics ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_value_semantics(world, cuda_graphs):
    with TrtRunner(world.path, cuda_graphs=cuda_graphs) as runner:
        x = feeds(*PREFILL[1])
        before = {n: t.clone() for n, t in x.items()}
        first, second = runner.infer(x), runner.infer(x)
        assert same(x, before) and same(first, network(x)) and same(second, first)
        assert all(first[n] is not second[n] and first[n].data_ptr() != second[n].data_ptr() for n in first)
        # one cache feeds many steps (three decodes of one key: uncaptured, captured, replayed with graphs on)
        step = {"input_ids": torch.tensor([[7], [11]]), "attention_mask": torch.ones(2, 6, dtype=torch.long),
                "position_ids": torch.tensor([[5], [5]]), **runner.carry_past(first)}
        kept = {n: t.clone() for n, t in first.items()}
        results = [runner.infer(step) for _ in range(3)]
        assert same(first, kept), "a decode step changed the cache it was fed"
        assert all(same(r, network(step)) for r in results)
        fed = {a.data_ptr() for a in x.values()} | {a.data_ptr() for a in first.values()}
        assert not any(r[n].data_ptr() in fed for r in results for n in r)
        assert len(runner._graphs) == cuda_graphs


# ---- I/O by name -------------------------------------------------------------------------------------------------


def test_engine_io_is_matched_by_name_not_order(world):
    world.engine_order = "reversed"
    with TrtRunner(world.path) as runner:
        assert world.engine.names[0] == NAMES.outputs[-1]
        x = feeds(*DECODE[1])
        assert same(runner.infer(x), network(x))


@pytest.mark.parametrize("inputs, outputs, message", [
    (NAMES.inputs, NAMES.outputs[:-1], r"missing outputs \['present\.1\.value'\]"),
    (NAMES.inputs + ["token_type_ids"], NAMES.outputs, r"unexpected inputs \['token_type_ids'\]"),
    ([n for n in NAMES.inputs if n != "position_ids"], NAMES.outputs + ["position_ids"],
     r"missing inputs \['position_ids'\]; unexpected outputs \['position_ids'\]"),
])
def test_engine_io_other_than_the_manifests_is_refused(world, inputs, outputs, message):
    world.engine_inputs, world.engine_outputs = inputs, outputs
    runner = TrtRunner(world.path)
    with pytest.raises(EngineError, match=r"model\.engine does not have the I/O its manifest describes: " + message):
        runner.activate()
    assert not runner.is_active and world.engine.contexts == []


def test_an_engine_tensorrt_cannot_read_is_an_engine_error(world):
    world.path.write_bytes(b"not a plan")
    with pytest.raises(EngineError, match="TensorRT could not deserialise .*model.engine"):
        TrtRunner(world.path).activate()


# ---- CUDA graphs -------------------------------------------------------------------------------------------------


def test_decode_graph_captured_on_the_second_call_then_replayed(world):
    B, S, P = DECODE[1]
    with TrtRunner(world.path, cuda_graphs=True) as runner:
        engine = world.engine
        steps = [feeds(B, S, P, seed=i) for i in range(4)]
        originals = [{n: t.clone() for n, t in x.items()} for x in steps]

        first = runner.infer(steps[0])  # first sight of (batch, past): uncaptured, on the decode context
        assert same(first, network(steps[0])) and not runner._graphs and len(engine.contexts) == 2
        assert engine.contexts[1].count("execute_async_v3") == 1 and world.calls("capture_begin") == []

        start = len(world.log)
        second = runner.infer(steps[1])  # second sight: captured on a new context, after a warm-up enqueue
        assert same(second, network(steps[1]))
        assert len(engine.contexts) == 3 and len(runner._graphs) == 1
        own = engine.contexts[2]
        memory = (runner._memory.data_ptr(), runner._memory.numel())
        assert own.strategy == USER_MANAGED and own.memory == memory
        assert own.count("set_optimization_profile_async") == 1 and own.profile == 1
        order = [(who, m, args) for who, m, args in world.log[start:]
                 if m in ("execute_async_v3", "capture_begin", "capture_end", "replay")]
        stream = runner.stream.cuda_stream
        assert order == [("ctx2", "execute_async_v3", (stream, False)),
                         ("cuda", "capture_begin", ("runner", "thread_local")),
                         ("ctx2", "execute_async_v3", (stream, True)),
                         ("cuda", "capture_end", ()),
                         ("cuda", "replay", ())]
        assert engine.contexts[1].count("execute_async_v3") == 1  # the profile contexts were not touched

        graph = next(iter(runner._graphs.values()))
        runs = engine.executes()
        for i in (2, 3):  # later calls replay: no enqueue on any context, feeds copied into the static inputs
            out = runner.infer(steps[i])
            assert engine.executes() == runs and len(engine.contexts) == 3
            assert same(out, network(steps[i]))
            assert same(graph["inputs"], steps[i])
            assert all(out[n] is not graph["outputs"][n] and out[n].data_ptr() != graph["outputs"][n].data_ptr()
                       for n in out)
        assert world.graphs[0].replays == 3
        assert same(second, network(steps[1])), "a replay changed an output returned before"
        assert all(same(x, o) for x, o in zip(steps, originals, strict=True)), "a feed was written"


@pytest.mark.parametrize("failure", ["execute returns False", "capture raises"])
def test_a_failed_capture_is_dropped_and_runs_uncaptured(world, monkeypatch, failure):
    B, S, P = DECODE[2]
    with TrtRunner(world.path, cuda_graphs=True) as runner:
        engine = world.engine
        if failure == "execute returns False":
            engine.execute_fails = lambda context, capturing: capturing
        else:
            world.capture_error = "CUDA error: operation not permitted when stream is capturing"
        warned = []  # (the CLI's logging setup stops the package loggers' propagation: caplog may see nothing)
        monkeypatch.setattr(runtime.log, "warning", lambda message, *args: warned.append(message % args))
        steps = [feeds(B, S, P, seed=i) for i in range(4)]
        runner.infer(steps[0])
        out = runner.infer(steps[1])
        assert same(out, network(steps[1])) and not runner._graphs
        assert len(warned) == 1 and "running uncaptured" in warned[0], warned
        assert len(engine.contexts) == 3 and engine.contexts[1].count("execute_async_v3") == 2
        for x in steps[2:]:  # the key is not captured again: no new context, no capture, one enqueue per call
            assert same(runner.infer(x), network(x))
        assert len(engine.contexts) == 3 and len(world.calls("capture_begin")) == 1
        assert engine.contexts[1].count("execute_async_v3") == 4 and not runner._graphs and len(warned) == 1


def test_graphs_beyond_max_graphs_evict_the_least_recently_used(world):
    keys = {name: feeds(1, 1, P, seed=P) for name, P in (("A", 3), ("B", 4), ("C", 5))}
    with TrtRunner(world.path, cuda_graphs=True, max_graphs=2) as runner:
        engine = world.engine

        def run(name):
            assert same(runner.infer(keys[name]), network(keys[name])), name

        def cached():
            return [dict(key[1])[NAMES.past[0][0]][2] for key in runner._graphs]  # past lengths, LRU first

        for name in "AABB":
            run(name)
        assert cached() == [3, 4] and len(engine.contexts) == 4
        run("A")  # a replay makes A the most recently used
        assert cached() == [4, 3] and len(engine.contexts) == 4
        run("C")
        run("C")  # C captured: B, the least recently used, is dropped (not A, the oldest capture)
        assert cached() == [3, 5] and len(engine.contexts) == 5
        runs = engine.executes()
        run("A")
        assert engine.executes() == runs  # still captured
        run("B")  # seen before: captured again at once, on a new context
        assert cached() == [3, 4] and len(engine.contexts) == 6


def test_prefill_never_captures(world):
    with TrtRunner(world.path, cuda_graphs=True) as runner:
        x = feeds(*PREFILL[2])
        for _ in range(4):
            assert same(runner.infer(x), network(x))
        assert not runner._graphs and len(world.engine.contexts) == 2 and world.calls("capture_begin") == []
        assert world.engine.contexts[0].count("execute_async_v3") == 4


def test_generation_with_and_without_graphs_matches_the_network(world):
    prompts = [[1, 306, 465, 278], [1, 7]]
    with NetworkRunner() as oracle:
        expected = generate(oracle, prompts, max_new_tokens=6, eos_token_id=None)
    with TrtRunner(world.path) as runner:
        assert generate(runner, prompts, max_new_tokens=6, eos_token_id=None) == expected
    with TrtRunner(world.path, cuda_graphs=True) as runner:
        for _ in range(3):  # uncaptured, captured, replayed
            assert generate(runner, prompts, max_new_tokens=6, eos_token_id=None) == expected
        assert len(runner._graphs) == 5 and all(g.replays == 2 for g in world.graphs)


def test_max_graphs_must_be_positive(world):
    with pytest.raises(InputError, match="max_graphs must be a positive integer, got 0"):
        TrtRunner(world.path, cuda_graphs=True, max_graphs=0)


# ---- the runner's checks come first; activation ------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"attention_mask": torch.ones(2, 1, dtype=torch.long)}, r"attention_mask must be \[batch=2, cached\+new=8\]"),
    ({"input_ids": torch.tensor([[V], [0]])}, rf"token id {V} is outside the vocabulary"),
    ({"token_type_ids": torch.zeros(2, 1, dtype=torch.long)}, r"unknown \['token_type_ids'\]"),
])
def test_the_input_checks_run_before_any_context_call(world, change, message):
    with TrtRunner(world.path, cuda_graphs=True) as runner:
        calls = len(world.log)
        with pytest.raises(InputError, match=message):
            runner.infer(feeds(*DECODE[1]) | change)
        assert len(world.log) == calls


def test_deactivate_releases_and_reactivates(world):
    runner = TrtRunner(world.path, cuda_graphs=True)
    with runner:
        x = feeds(*DECODE[0])
        runner.infer(x)
        runner.infer(x)
        assert runner._graphs
    assert not runner._graphs and runner._contexts == [] and runner._memory is None and runner.engine is None
    with pytest.raises(InputError, match="activate the runner first"):
        runner.infer(x)
    with runner:
        assert same(runner.infer(x), network(x)) and not runner._graphs  # a fresh start: first sight again


@pytest.mark.parametrize("mode", ["aot", "jit"])
def test_jit_engines_register_the_plugins(world, monkeypatch, mode):
    from engines import plugins

    registered = []
    monkeypatch.setattr(plugins, "register_plugins", lambda: registered.append(True))
    write_manifest(world.path, dataclasses.replace(MANIFEST, dispatch="plugin", plugins=plugins.plugin_versions(),
                                                   plugin_mode=mode))
    with TrtRunner(world.path):
        assert registered == ([True] if mode == "jit" else [])


def test_the_cuda_seam_is_torch_cuda(monkeypatch):
    """What FakeCuda stands in for: each _Cuda method is one torch.cuda call, with arguments torch accepts."""
    import inspect

    real = {name: getattr(torch.cuda, name) for name in ("Stream", "current_stream", "device", "stream", "CUDAGraph",
                                                         "graph")}
    calls = []
    for name in real:
        monkeypatch.setattr(torch.cuda, name, lambda *a, _name=name, **k: calls.append((_name, a, k)) or _name)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    cuda = runtime._Cuda()
    device = cuda.device()
    assert device == torch.device("cuda", 3)
    assert [cuda.stream(device), cuda.current_stream(device), cuda.on_device(device), cuda.use_stream("s"),
            cuda.graph(), cuda.capture("g", "s", capture_error_mode="thread_local")] == [
        "Stream", "current_stream", "device", "stream", "CUDAGraph", "graph"]
    for name, args, kwargs in calls:
        inspect.signature(real[name]).bind(*args, **kwargs)  # TypeError if torch would refuse the call
    assert calls[-1] == ("graph", ("g",), {"stream": "s", "capture_error_mode": "thread_local"})
