"""One replay from start to finish: check the inputs, load the model, drive, write, compare, report.

Everything that can be checked cheaply (config, tolerance file, model statistics, bag topics and length)
is checked before the model is loaded, so bad input fails fast with exit code 2.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from internvla_ros.model.checkpoint import STATS_FILE
from internvla_ros.model.errors import ModelError
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.replay.command_log import CommandRecorder, load_golden
from internvla_ros.replay.compare import Comparison, Tolerance, compare
from internvla_ros.replay.driver import DEFAULT_BATCH, DriverOptions, ReplayDriver, ReplaySink, ReplayStats
from internvla_ros.replay.errors import ReplayError
from internvla_ros.replay.lookahead import LookaheadInference, SequentialInference
from internvla_ros.replay.messages import COMPRESSED_IMAGE, IMAGE, JOINT_STATE, STRING, MessageFactory, make_typestore
from internvla_ros.replay.reader import BagInfo, BagReader
from internvla_ros.replay.topics import TopicMap, input_namespaces
from internvla_ros.replay.writer import BagWriter
from internvla_ros.runtime import ActionMapper, PolicyRuntime, RuntimeConfig
from internvla_ros.runtime.config import NS_PER_S
from internvla_ros.runtime.errors import RuntimeConfigError
from internvla_ros.runtime.node_parameters import NOT_ROBOT_CONFIG

INFERENCE_THREADS = 1  # torch threads per op: reproducible float results; 2 spin-wait on a shared CPU
KIB = 1024  # ru_maxrss is in KiB on Linux


@dataclass(frozen=True)
class ReplayRequest:
    bag: Path
    config: Path
    model: Path
    out: Path | None = None
    golden: Path | None = None
    report: Path | None = None
    tolerance: Path | None = None
    namespace: str | None = None  # None: the one namespace holding every input topic
    remaps: Sequence[str] = ()
    inference_latency_ns: int = 100_000_000
    status_period_ns: int = 500_000_000
    instruction: str = ""  # empty: the bag's instruction topic
    seed: int = 0
    dtype: str = "float32"
    tokenizer: Path | None = None
    overwrite: bool = False
    batch: int = DEFAULT_BATCH
    noise_scale: float = 1.0  # the node's noise_scale: the sampler's starting noise x this
    backend: str = "torch"  # the policy node's backend parameter: torch, onnxruntime, ...


@dataclass
class ReplayOutcome:
    request: ReplayRequest
    config: RuntimeConfig
    topics: TopicMap
    bag: BagInfo
    camera_topics: dict[str, str]
    stats: ReplayStats
    recorder: CommandRecorder
    wall_s: float
    model_load_s: float
    maxrss_mib: float
    out: Path | None = None
    comparison: Comparison | None = None
    notes: list[str] = field(default_factory=list)
    threads: int = 1  # the replay loop, and the look-ahead thread when batching
    batch: int = 1  # as run (1 when the request's batch could not be used)
    precomputed: int = 0  # chunks found computed ahead (the others were computed inline)
    policy: str = ""  # how the policy ran (its backend's description), for the summary

    @property
    def speed(self) -> float:
        """Bag seconds replayed per wall second (model loading excluded)."""
        return self.bag.duration_ns / NS_PER_S / self.wall_s if self.wall_s > 0 else float("inf")


def load_config(path: Path) -> RuntimeConfig:
    try:
        return RuntimeConfig.from_yaml(path, ignore=NOT_ROBOT_CONFIG)
    except RuntimeConfigError as err:
        msg = f"--config: {err}"
        raise ReplayError(msg) from err


def select_inputs(bag: BagInfo, topics: TopicMap, notes: list[str] | None = None) -> dict[str, str]:
    """The topic each camera is read from (raw preferred), after checking every input is there and typed."""
    present = bag.topics
    missing = topics.missing_inputs(present)
    if missing:
        note = "" if bag.metadata_found or bag.path.is_file() else (
            f" (no metadata.yaml: read the {len(bag.files)} storage files directly)")
        msg = (f"{bag.path}: the bag lacks {', '.join(missing)}{note}. The config expects "
               f"{', '.join(topics.inputs())}; the bag has {bag.describe_topics()}. Use --namespace/--remap if the "
               "robot recorded other names.")
        raise ReplayError(msg)
    cameras = {}
    for camera, topic in topics.cameras.items():
        compressed = topics.compressed(camera)
        cameras[camera] = topic if topic in present else compressed
        if topic in present and compressed in present and notes is not None:
            notes.append(f"camera {camera}: both {topic} and {compressed} were recorded; the raw one is replayed")
    types = {topics.joint_states: JOINT_STATE, topics.instruction: STRING}
    types |= {t: COMPRESSED_IMAGE if t.endswith("/compressed") else IMAGE for t in cameras.values()}
    for topic, msgtype in types.items():
        if topic in present and present[topic].msgtype != msgtype:
            msg = f"{bag.path}: {topic} carries {present[topic].msgtype}; the policy node reads {msgtype}"
            raise ReplayError(msg)
    return cameras


def choose_namespace(bag: BagInfo, config: RuntimeConfig, remaps: Sequence[str],
                     announce: Callable[[str], None] | None = None) -> str:
    """The one namespace holding every input topic; several are refused. None found: `/` (then reported missing)."""
    found = input_namespaces(config, bag.topics, remaps)
    if len(found) > 1:
        msg = (f"{bag.path}: {len(found)} namespaces hold every input topic the config expects: {', '.join(found)}; "
               f"choose one with --namespace, e.g. --namespace {found[0]}")
        raise ReplayError(msg)
    namespace = found[0] if found else "/"
    if namespace != "/" and announce is not None:
        topics = TopicMap.from_config(config, namespace, remaps)
        announce(f"namespace {namespace}: the only one holding {', '.join(topics.inputs())} (--namespace chooses)")
    return namespace


def check_instruction(bag: BagInfo, topics: TopicMap, instruction: str, notes: list[str]) -> None:
    """The instruction comes from --instruction, else from the bag's instruction topic; neither is an error."""
    recorded = bag.topics.get(topics.instruction)
    count = recorded.count if recorded is not None else 0
    if instruction.strip():
        if count:
            notes.append(f"--instruction overrides the bag's {topics.instruction} ({count} messages, not replayed)")
        return
    if not count:
        state = "has no" if recorded is None else "has an empty"
        msg = (f"{bag.path}: no instruction: the bag {state} {topics.instruction} topic; "
               "pass --instruction 'the task, e.g. sort the parcels'")
        raise ReplayError(msg)


def check_length(bag: BagInfo, config: RuntimeConfig) -> None:
    chunk_ns = (config.execution.chunk_size - 1) * config.rates.chunk_step_ns
    if bag.duration_ns < chunk_ns:
        steps, rate = config.execution.chunk_size, config.rates.chunk_step_hz
        msg = (f"{bag.path}: the bag lasts {bag.duration_ns / NS_PER_S:.3f} s, shorter than one chunk "
               f"({steps} steps at {rate:g} Hz = {chunk_ns / NS_PER_S:.3f} s)")
        raise ReplayError(msg)


def load_key(request: ReplayRequest, config: RuntimeConfig) -> tuple:
    """Everything ``load_model``'s policy depends on, for callers that keep loaded policies: the model
    directory's files by name, size and time (a model retrained in place loads again), the sampling settings,
    the backend and how many of a batch's observations it runs at once, and the cameras' slots."""
    model = Path(request.model).resolve()
    files = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(model.iterdir()) if p.is_file())
    return (str(model), files, request.seed, request.noise_scale, request.dtype, str(request.tokenizer),
            request.backend, _batch_workers(request), tuple(sorted((c.name, c.slot) for c in config.cameras)))


def _batch_workers(request: ReplayRequest) -> int:
    """A batch computed ahead runs its observations on every core where the backend computes them one at a
    time (ONNX Runtime); each one's chunk is the same bit for bit."""
    return min(request.batch, os.cpu_count() or 1)


def load_model(request: ReplayRequest, config: RuntimeConfig) -> object:
    from internvla_ros.runtime.internvla_policy import load_policy  # torch-heavy: only once inputs are fine

    torch.set_num_threads(INFERENCE_THREADS)
    try:
        return load_policy(model=str(request.model), tokenizer=str(request.tokenizer) if request.tokenizer else None,
                           dtype=request.dtype, cameras={c.name: c.slot for c in config.cameras}, seed=request.seed,
                           noise_scale=request.noise_scale, backend=request.backend, threads=INFERENCE_THREADS,
                           batch_workers=_batch_workers(request))
    except (ModelError, OSError, ValueError) as err:
        msg = f"--model {request.model}: {err}"
        raise ReplayError(msg) from err


def run_replay(request: ReplayRequest, progress: Callable[[BagInfo], Callable[[int], None]] | None = None,
               policy_loader: Callable[[ReplayRequest, RuntimeConfig], object] | None = None,
               announce: Callable[[str], None] | None = None) -> ReplayOutcome:
    """Runs one replay; raises ReplayError for unusable input (nothing is left under ``request.out``).

    ``announce`` hears choices made for the user before the model loads (the namespace found in the bag).
    """
    if request.batch < 1:
        msg = f"--batch must be >= 1, got {request.batch}"
        raise ReplayError(msg)
    config = load_config(request.config)
    tolerance = Tolerance.from_yaml(request.tolerance) if request.tolerance else Tolerance()
    try:
        stats = NormalizationStats.load(request.model / STATS_FILE, config.robot_type)
    except (ModelError, OSError) as err:
        msg = f"--model {request.model}: {err}"
        raise ReplayError(msg) from err
    store = make_typestore()
    notes: list[str] = []
    with BagReader(request.bag, store) as reader:
        assert reader.info is not None
        bag = reader.info
        if not bag.metadata_found and not bag.path.is_file():
            notes.append(f"{bag.path} has no metadata.yaml: its {len(bag.files)} storage files were read directly "
                         "(mcap files carry their schemas; types without a definition come from the Jazzy type store)")
        namespace = request.namespace
        if namespace is None:
            namespace = choose_namespace(bag, config, request.remaps, announce)
        topics = TopicMap.from_config(config, namespace, request.remaps)
        cameras = select_inputs(bag, topics, notes)
        check_length(bag, config)
        check_instruction(bag, topics, request.instruction, notes)
        started = time.monotonic()
        policy = (policy_loader or load_model)(request, config)
        model_load_s = time.monotonic() - started
        mapper = ActionMapper(config, stats)
        runtime = _new_runtime(config, mapper)
        if config.safety.dry_run:
            notes.append("the config has safety.dry_run: true; the replay records the commands the node "
                         "sends with actuation enabled")
        # The command log and the measured joints are kept only for a comparison or a report: without
        # them memory does not grow with the bag's length.
        keep = request.golden is not None or request.report is not None
        recorder = CommandRecorder(config)
        sinks: list[ReplaySink] = [recorder] if keep else []
        writer = BagWriter(request.out, topics, MessageFactory(store), request.overwrite) if request.out else None
        if writer is not None:
            sinks.append(writer)
        options = DriverOptions(request.inference_latency_ns, request.status_period_ns, request.instruction,
                                keep_measured=keep)
        inference = _inference(policy, request, config, notes,
                               lambda source: _plan(source, request.bag, config, stats, topics, cameras, options))
        driver = ReplayDriver(runtime, mapper, inference, topics, cameras, options, sinks,
                              progress(bag) if progress else None)
        try:
            started = time.monotonic()
            replay_stats = driver.run(reader.messages(driver.input_topics), bag.end_ns)
            wall_s = time.monotonic() - started
            _check_ran(bag, replay_stats, config)
            out = writer.commit() if writer is not None else None
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            if isinstance(inference, SequentialInference):
                inference.close()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB
    batch = inference.batch if isinstance(inference, LookaheadInference) else 1
    outcome = ReplayOutcome(request, config, topics, bag, cameras, replay_stats, recorder, wall_s, model_load_s,
                            maxrss, out, notes=notes, threads=2 if batch > 1 else 1, batch=batch,
                            precomputed=inference.hits if isinstance(inference, LookaheadInference) else 0,
                            policy=str(getattr(policy, "info", {}).get("backend_description", type(policy).__name__)))
    if request.golden is not None:
        golden = load_golden(request.golden, config, topics, lambda path: BagReader(path, store))
        outcome.comparison = compare(recorder.log, golden, config, tolerance)
    return outcome


def _new_runtime(config: RuntimeConfig, mapper: ActionMapper) -> PolicyRuntime:
    runtime = PolicyRuntime(config, mapper)
    if config.safety.dry_run:
        # Offline nothing moves: record the commands the node would send once actuation is enabled.
        runtime.set_dry_run(False)
    return runtime


def _inference(policy: object, request: ReplayRequest, config: RuntimeConfig, notes: list[str],
               planner: Callable[[LookaheadInference], None]) -> object:
    """What the driver asks for chunks: batches computed ahead when they reproduce the sequential replay."""
    from internvla_ros.runtime.internvla_policy import InternVLAPolicy

    if not isinstance(policy, InternVLAPolicy):
        return policy  # e.g. an analytic test policy: asked inline, with its own noise
    rates = config.rates
    if request.batch > 1 and rates.foresight_rate_hz < rates.inference_rate_hz:
        notes.append(f"--batch {request.batch} not used: the config reuses foresight K/V between chunks "
                     f"(foresight_rate_hz {rates.foresight_rate_hz:g} < inference_rate_hz "
                     f"{rates.inference_rate_hz:g}), which only the sequential replay reproduces")
        return SequentialInference(policy, request.seed)
    if request.batch == 1:
        return SequentialInference(policy, request.seed)
    return LookaheadInference(policy, request.seed, request.batch, planner)


def _plan(source: LookaheadInference, bag: Path, config: RuntimeConfig, stats: NormalizationStats,
          topics: TopicMap, cameras: dict[str, str], options: DriverOptions) -> None:
    """The planning replay the look-ahead thread runs: same bag, its own reader and runtime, no control."""
    with BagReader(bag, make_typestore()) as reader:
        assert reader.info is not None
        mapper = ActionMapper(config, stats)
        driver = ReplayDriver(_new_runtime(config, mapper), mapper, source.placeholder(), topics, cameras,
                              replace(options, control=False, keep_measured=False), (), source.reached)
        driver.run(reader.messages(driver.input_topics), reader.info.end_ns)


def _check_ran(bag: BagInfo, stats: ReplayStats, config: RuntimeConfig) -> None:
    """A replay that never started or never produced a chunk has nothing to compare: unusable input."""
    if stats.started_ns is None:
        reasons = [f"camera {c}: {stats.invalid_images[c]} images rejected ({stats.image_errors[c]})"
                   for c in stats.invalid_images]
        if stats.rejected_joint_states:
            reasons.append(f"{stats.rejected_joint_states} joint_states rejected (joints missing or malformed)")
        detail = "; ".join(reasons) or "joint_states and every camera were never fresh at the same time"
        msg = f"{bag.path}: the policy never started: {detail}"
        raise ReplayError(msg)
    if stats.chunks == 0:
        status = stats.final_status
        detail = f"state {status.state.value}, stale-input events {dict(status.stale)}" if status else ""
        msg = f"{bag.path}: no chunk was computed ({detail})"

        raise ReplayError(msg)
