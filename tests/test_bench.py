"""edgekd.bench: statistics, the timing loop, runners, artifacts, reports, the CI gate and the CLI.

No test asserts a wall-clock time: timing-loop tests count iterations against a fake clock, and the gate
tests compare a model with a ~1000x heavier one (or with itself) under generous thresholds.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekd.bench import (
    RUNNERS,
    BenchReport,
    BenchResult,
    BenchSettings,
    Runner,
    Stats,
    benchmark,
    check_budget,
    compare_reports,
    load_report,
    p50_drift,
    parse_fraction,
    regressions,
    resolve_artifact,
    speedups,
    summarize,
    time_runner,
    to_csv,
    to_markdown,
)
from edgekd.bench._env import capture_environment, cpu_info
from edgekd.bench._schema import ArtifactInfo, Environment
from edgekd.cli import app
from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.modeldir import Lineage, ModelCard, ModelSpec, load_model_dir, save_model_dir
from edgekd.specs import Preprocess, Task
from edgekd.students import build_model, count_macs

cli = CliRunner()
FAST = BenchSettings(warmup_s=0.0, warmup_iters=2, min_s=0.03, min_iters=10, roofline=False, threads=1)
FAST_FLAGS = [
    "--warmup-s",
    "0",
    "--warmup-iters",
    "2",
    "--min-s",
    "0.05",
    "--min-iters",
    "15",
    "--no-roofline",
    "--threads",
    "1",
    "--quiet",
]


def run(*args: str):
    return cli.invoke(app, list(args), env={"COLUMNS": "250"})


# --------------------------------------------------------------------------- fixtures: tiny artifacts


def _make_model_dir(out: Path, *, widths=(8, 8, 8, 8), size=16, chans=1, lineage: Lineage | None = None) -> Path:
    spec = ModelSpec(name="small:tinycnn", num_classes=2, in_chans=chans, kwargs={"widths": list(widths)})
    pre = Preprocess(
        input_size=(size, size), data_channels=chans, in_chans=chans, mean=(0.5,) * chans, std=(0.25,) * chans
    )
    card = ModelCard(spec=spec, task=Task.BINARY, label_names=["a", "b"], preprocess=pre, lineage=lineage or Lineage())
    torch.manual_seed(0)
    return save_model_dir(build_model(spec).eval(), card, out)


def _export_onnx(model_dir: Path, out: Path, *, dynamic: bool = True) -> Path:
    from edgekd.modeldir import load_model_dir

    model, card = load_model_dir(model_dir)
    h, w = card.preprocess.input_size
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    torch.onnx.export(
        model,
        (torch.zeros(1, card.preprocess.in_chans, h, w),),
        str(out),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    return out


def _make_bundle(model_dir: Path, out: Path, *, engine: bool = False) -> Path:
    """A bundle laid out as issue 4 specifies, written by hand so these tests do not depend on the exporter."""
    from edgekd.modeldir import sha256_file

    out.mkdir(parents=True)
    onnx_path = _export_onnx(model_dir, out / "model.onnx")
    files = [
        {
            "name": "model.onnx",
            "sha256": sha256_file(onnx_path),
            "kind": "onnx",
            "precision": "fp32",
            "bytes": onnx_path.stat().st_size,
        }
    ]
    if engine:
        fake = out / "model.fp16.engine"
        fake.write_bytes(b"not a real engine")
        files.append(
            {
                "name": fake.name,
                "sha256": sha256_file(fake),
                "kind": "engine",
                "precision": "fp16",
                "bytes": fake.stat().st_size,
            }
        )
    manifest = {
        "schema_version": 1,
        "name": out.name,
        "target": "onnxruntime",
        "task": "binary",
        "label_names": ["a", "b"],
        "files": files,
        "inputs": [{"name": "input", "shape": ["batch", 1, 16, 16], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": ["batch", 2], "dtype": "float32"}],
        "lineage": {"versions": {"git_revision": "cafe1234"}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "preprocess.json").write_text(
        json.dumps({"input_size": [16, 16], "in_chans": 1, "data_channels": 1, "mean": [0.5], "std": [0.25]})
    )
    return out


@pytest.fixture(scope="module")
def arts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    fast = _make_model_dir(root / "fast" / "model", lineage=Lineage(versions={"git": "abc123"}))
    # The "slowed" artifact has the same name and ~1000x the MACs: it must trip the gate on any machine.
    slow = _make_model_dir(root / "slow" / "model", widths=(32, 64, 96, 128), size=64)
    return {
        "root": root,
        "fast": fast,
        "slow": slow,
        "onnx": _export_onnx(fast, root / "tiny.onnx"),
        "static": _export_onnx(fast, root / "static.onnx", dynamic=False),
        "bundle": _make_bundle(fast, root / "bundle"),
        "bundle_engine": _make_bundle(fast, root / "bundle_engine", engine=True),
    }


@pytest.fixture(scope="module")
def base_json(arts) -> Path:
    """A baseline report of the fast model on ORT CPU at batch 1."""
    out = arts["root"] / "base.json"
    r = run("bench", "run", str(arts["fast"]), "--backend", "ort", "--device", "cpu", *FAST_FLAGS, "--json", str(out))
    assert r.exit_code == 0, r.output
    return out


# --------------------------------------------------------------------------- statistics


def test_summarize_stored_values():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], batch=4)
    assert (s.n, s.min_ms, s.max_ms, s.mean_ms) == (10, 1.0, 10.0, 5.5)
    assert (s.p50_ms, s.p90_ms, s.p95_ms, s.p99_ms) == pytest.approx((5.5, 9.1, 9.55, 9.91))
    assert s.std_ms == pytest.approx(3.0276503540974917)  # sample std, ddof=1
    assert s.cv == pytest.approx(0.5504818825631803)
    assert s.throughput == pytest.approx(4 / 5.5e-3)
    assert s.high_cv


def test_summarize_skewed_list_matches_numpy_linear():
    times = [0.5, 0.7, 0.6, 2.0, 0.55]
    s = summarize(times, batch=1, cv_warn=10.0)
    # h = (n - 1) q: p90 -> 0.7 + 0.6 * 1.3, p95 -> 0.7 + 0.8 * 1.3, p99 -> 0.7 + 0.96 * 1.3
    assert (s.p50_ms, s.p90_ms, s.p95_ms, s.p99_ms) == pytest.approx((0.6, 1.48, 1.74, 1.948))
    assert [s.p50_ms, s.p90_ms, s.p95_ms, s.p99_ms] == pytest.approx(
        np.percentile(times, [50, 90, 95, 99], method="linear").tolist()
    )
    assert s.cv == pytest.approx(np.std(times, ddof=1) / np.mean(times))
    assert not s.high_cv


def test_p50_drift_flags_a_machine_that_slowed_down_mid_run():
    steady = [1.0, 1.1, 0.9, 1.05, 0.95] * 20  # 100 iterations, the same distribution throughout
    s = summarize(steady, batch=1, cv_warn=1.0)
    assert s.p50_drift == pytest.approx(1.0) and not s.high_drift
    slowed = [1.0] * 60 + [1.3] * 40  # the last two fifths ran 30 % slower
    s = summarize(slowed, batch=1, cv_warn=1.0)
    assert s.p50_drift == pytest.approx(1.3) and s.high_drift
    assert not summarize(slowed, batch=1, cv_warn=1.0, drift_warn=0.5).high_drift
    assert p50_drift([1.0] * 49) is None  # fewer than 10 per fifth: no verdict
    assert summarize([1.0] * 10, batch=1).p50_drift is None


def test_summarize_single_value_and_bad_input():
    s = summarize([2.0], batch=1)
    assert s.std_ms == 0.0 and s.cv == 0.0 and s.p99_ms == 2.0
    with pytest.raises(InvalidInputError):
        summarize([], batch=1)
    with pytest.raises(InvalidInputError):
        summarize([1.0, float("nan")], batch=1)
    with pytest.raises(InvalidInputError):
        summarize([1.0], batch=0)


# --------------------------------------------------------------------------- the timing loop


class FakeClock:
    """Seconds in steps of 1/1024 (exact in binary floating point), advanced only by the fake runner."""

    STEP = 1 / 1024

    def __init__(self) -> None:
        self.ticks = 0

    def __call__(self) -> float:
        return self.ticks * self.STEP


class FakeRunner(Runner):
    """``run`` costs one tick on the host, ``sync`` one more (the device finishing): 2 ticks per iteration."""

    backend = "fake"
    kinds = frozenset()

    def __init__(self, clock: FakeClock | None = None, sleep_s: float = 0.0) -> None:
        super().__init__()
        self.clock, self.sleep_s, self.calls = clock, sleep_s, []

    @classmethod
    def unavailable(cls, device, settings):
        return None

    @classmethod
    def targets(cls, artifact, precision):
        return [], None

    def load(self, target, device, batch, options):
        pass

    def run(self):
        self.calls.append("run")
        if self.clock:
            self.clock.ticks += 1
        if self.sleep_s:
            import time

            time.sleep(self.sleep_s)

    def sync(self):
        self.calls.append("sync")
        if self.clock:
            self.clock.ticks += 1

    def close(self):
        pass


def _loop(**kw):
    clock = FakeClock()
    runner = FakeRunner(clock)
    settings = BenchSettings(**{"warmup_s": 0.0, "warmup_iters": 0, "min_s": 0.0, "min_iters": 1, **kw})
    return time_runner(runner, settings, clock=clock), runner


def test_timing_loop_duration_bound():
    # 2 ticks per iteration; 200 ticks of minimum duration -> exactly 100 iterations, though 5 were asked.
    timing, _ = _loop(min_iters=5, min_s=200 * FakeClock.STEP)
    assert len(timing.times_ms) == 100


def test_timing_loop_count_bound():
    timing, _ = _loop(min_iters=300, min_s=10 * FakeClock.STEP)
    assert len(timing.times_ms) == 300


def test_timing_loop_sync_is_inside_the_timer():
    timing, runner = _loop(min_iters=7)
    # Each measured time spans run + sync (2 ticks): the device wait is part of the latency.
    assert timing.times_ms == pytest.approx([2 * FakeClock.STEP * 1e3] * 7)
    assert runner.calls == ["run", "sync"] * 7


def test_timing_loop_warmup_by_time_and_count():
    timing, _ = _loop(warmup_iters=3, warmup_s=40 * FakeClock.STEP)
    assert timing.warmup_iters == 20  # time-bound: 40 ticks / 2 per iteration
    timing, _ = _loop(warmup_iters=25, warmup_s=4 * FakeClock.STEP)
    assert timing.warmup_iters == 25  # count-bound


def test_timing_loop_max_s_caps():
    timing, _ = _loop(min_iters=1000, max_s=50 * FakeClock.STEP)
    assert len(timing.times_ms) == 25


def test_timing_loop_real_sleep_meets_both_minimums():
    runner = FakeRunner(sleep_s=0.002)
    timing = time_runner(runner, BenchSettings(warmup_s=0.0, warmup_iters=1, min_s=0.03, min_iters=5))
    assert len(timing.times_ms) >= 5
    assert timing.total_s >= 0.03  # the loop's own record of its duration honours min_s
    assert runner.calls.count("run") == timing.warmup_iters + len(timing.times_ms)


# --------------------------------------------------------------------------- runners and artifacts


@pytest.mark.parametrize("name", RUNNERS.names())
def test_every_runner_names_itself_and_says_why_it_cannot_run(name):
    cls = RUNNERS.get(name)
    assert issubclass(cls, Runner) and cls.backend == name
    reason = cls.unavailable("cuda", BenchSettings())
    if not torch.cuda.is_available():
        assert isinstance(reason, str) and reason  # no GPU here: every CUDA path says why


def _build_engine(onnx_path: Path, out: Path) -> Path:
    """A TensorRT engine of ``onnx_path`` (input ``[batch, 1, 16, 16]``, profile batch 1..8)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 1, 16, 16), (4, 1, 16, 16), (8, 1, 16, 16))
    config.add_optimization_profile(profile)
    out.write_bytes(bytes(builder.build_serialized_network(network, config)))
    return out


def _trt_feed(runner, x: np.ndarray) -> None:
    runner.buffers["input"].copy_(torch.from_numpy(x).cuda())
    torch.cuda.synchronize()  # the copy runs on the default stream, run() on the runner's own


class RunnerIO(NamedTuple):
    """How to reach one backend's pre-allocated buffers, which the load/run/close contract keeps private."""

    artifact: Callable[[dict[str, Path], Path], Path]
    feed: Callable[[Any, np.ndarray], object]
    read: Callable[[Any], np.ndarray]
    released: Callable[[Any], bool]
    atol: float


# A backend registered without an entry here fails test_every_runner_loads_runs_and_closes until it gets one.
RUNNER_IO = {
    "torch": RunnerIO(
        artifact=lambda arts, tmp: arts["fast"],
        feed=lambda r, x: r.x.copy_(torch.from_numpy(x)),
        read=lambda r: r.out.cpu().numpy(),
        released=lambda r: r.model is None and r.x is None and r.out is None,
        atol=1e-6,
    ),
    "ort": RunnerIO(
        artifact=lambda arts, tmp: arts["fast"],
        feed=lambda r, x: r.binding.bind_cpu_input("input", x),
        read=lambda r: r.binding.copy_outputs_to_cpu()[0],
        released=lambda r: r.session is None and r.binding is None,
        atol=1e-5,
    ),
    "trt": RunnerIO(
        artifact=lambda arts, tmp: _build_engine(arts["onnx"], tmp / "tiny.engine"),
        feed=_trt_feed,
        read=lambda r: r.buffers["logits"].cpu().numpy(),
        released=lambda r: r.engine is None and r.context is None and r.buffers == {},
        atol=1e-3,  # TensorRT may pick TF32 kernels for an fp32 engine
    ),
    "openvino": RunnerIO(
        artifact=lambda arts, tmp: _runtime_bundle(arts, tmp, "openvino"),
        feed=lambda r, x: r.request.get_input_tensor().data.__setitem__(..., x),
        read=lambda r: r.request.get_output_tensor(0).data.copy(),
        released=lambda r: r.request is None and r.compiled is None,
        atol=1e-5,
    ),
    "executorch": RunnerIO(
        artifact=lambda arts, tmp: _runtime_bundle(arts, tmp, "executorch"),
        feed=lambda r, x: r.inputs[0].copy_(torch.from_numpy(x)),
        read=lambda r: r.outputs[0].numpy(),
        released=lambda r: r.program is None and r.inputs == [] and r.outputs == [],
        atol=1e-5,
    ),
}


def _runtime_bundle(arts, tmp, fmt: str):
    """A bundle of the fast model with the runtime's file (the openvino / executorch runners run bundles)."""
    from edgekd.export import export_bundle

    export_bundle(arts["fast"], tmp / fmt, formats=f"onnx,{fmt}", n_samples=8)
    return tmp / fmt


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.gpu, pytest.mark.tensorrt] if n == "trt" else []) for n in RUNNERS.names()],
)
def test_every_runner_loads_runs_and_closes(name, arts, tmp_path):
    """``run`` computes the model's logits on the runner's own input buffer; ``close`` releases everything."""
    cls = RUNNERS.get(name)
    io = RUNNER_IO.get(name)
    assert io is not None, f"add backend {name!r} to RUNNER_IO"
    device = next((d for d in ("cpu", "cuda") if cls.unavailable(d, FAST) is None), None)
    if device is None:
        pytest.skip(f"backend {name} cannot run here: {cls.unavailable('cuda', FAST)}")
    targets, reason = cls.targets(resolve_artifact(str(io.artifact(arts, tmp_path))), None)
    assert targets, reason
    reference, _ = load_model_dir(arts["fast"])
    rng = np.random.default_rng(1)
    threads_before = torch.get_num_threads()
    with cls() as runner:
        runner.load(targets[0], device, 3, FAST)
        for _ in range(2):  # two different inputs: each run computes on what the input buffer holds now
            x = rng.standard_normal((3, 1, 16, 16), dtype=np.float32)
            io.feed(runner, x)
            runner.run()
            runner.sync()
            with torch.no_grad():
                want = reference.eval()(torch.from_numpy(x)).numpy()
            got = io.read(runner)
            assert got.shape == (3, 2)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=io.atol)
    # Leaving the block closed the runner: nothing is held, global torch threads are back, run has nothing to run.
    assert io.released(runner)
    assert torch.get_num_threads() == threads_before
    with pytest.raises((AttributeError, TypeError)):
        runner.run()


def test_model_dir_on_torch_and_ort_cpu(arts, tmp_path):
    before = torch.get_num_threads()
    report = benchmark([str(arts["fast"])], devices=["cpu"], batches=(1, 3), settings=FAST)
    assert torch.get_num_threads() == before  # the torch runner restores global threads
    got = {(r.backend, r.batch) for r in report.results}
    assert got == {("torch", 1), ("torch", 3), ("ort", 1), ("ort", 3)}
    macs = count_macs(
        build_model(ModelSpec(name="small:tinycnn", num_classes=2, in_chans=1, kwargs={"widths": [8, 8, 8, 8]})),
        (1, 1, 16, 16),
    )
    for r in report.results:
        assert r.stats.n >= FAST.min_iters and r.stats.p50_ms > 0 and r.stats.throughput > 0
        assert len(r.times_ms) == r.stats.n
        assert r.memory.rss_peak_bytes and r.memory.rss_peak_bytes > 0
        assert r.model.macs == macs and r.model.params and r.model.size_bytes
        assert r.model.input_shape == [r.batch, 1, 16, 16]
        assert (r.model.git_revision, r.model.git_revision_source) == ("abc123", "lineage")
        assert r.options["threads"] == 1
    out = tmp_path / "r.json"
    out.write_text(report.model_dump_json())
    again = BenchReport.model_validate_json(out.read_text())
    assert again.schema_version == 1 and len(again.results) == 4
    assert again.environment.cpu.threads_used == 1


def test_onnx_file_and_bundle_on_ort_via_cli(arts, tmp_path):
    out = tmp_path / "r.json"
    r = run(
        "bench",
        str(arts["onnx"]),
        str(arts["bundle"]),
        str(arts["bundle"] / "model.onnx"),
        "--batch",
        "1,2",
        *FAST_FLAGS,
        "--json",
        str(out),
    )
    assert r.exit_code == 0, r.output
    report = load_report(out)
    names = {x.name for x in report.results}
    assert names == {"tiny.onnx", "bundle/model.onnx", "model.onnx"}
    assert {x.backend for x in report.results} == {"ort"} and len(report.results) == 6
    macs = report.results[0].model.macs
    assert macs is not None and all(x.model.macs == macs for x in report.results)  # ONNX graph MACs
    from edgekd.modeldir import load_model_dir

    assert macs == count_macs(load_model_dir(arts["fast"])[0], (1, 1, 16, 16))  # same convention as torch
    bundled = [x for x in report.results if x.artifact == str(arts["bundle"])]
    assert all(x.precision == "fp32" and x.model.git_revision == "cafe1234" for x in bundled)


def test_roofline_and_environment(arts):
    report = benchmark([str(arts["onnx"])], backends=["ort"], settings=FAST.model_copy(update={"roofline": True}))
    env = report.environment
    assert env.peak_gflops["cpu"] > 0
    rf = report.results[0].roofline
    assert rf.peak_gflops == env.peak_gflops["cpu"] and rf.achieved_gflops > 0 and rf.fraction_of_peak > 0
    assert env.cpu.physical_cores and env.cpu.logical_cores and "avx512_vnni" in env.cpu.flags
    assert env.versions["onnxruntime"] and "CPUExecutionProvider" in env.ort_providers


def test_cpu_flags_parsed_from_cpuinfo():
    text = "processor: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile amx_int8\n"
    info = cpu_info(threads=8, cpuinfo=text)
    assert info.model == "Intel(R) Xeon(R) Platinum 8480+" and info.threads_used == 8
    assert info.flags["amx_int8"] and info.flags["avx512_vnni"] and not info.flags["amx_bf16"]


def test_capture_environment_without_hostname():
    env = capture_environment(threads=2, include_hostname=False)
    assert env.hostname is None and env.timestamp and env.cpu.threads_used == 2


def test_fixed_batch_onnx_is_skipped_with_reason(arts):
    report = benchmark([str(arts["static"])], backends=["ort"], batches=(1, 2), settings=FAST)
    assert [r.batch for r in report.results] == [1]
    assert len(report.skipped) == 1 and "fixed batch" in report.skipped[0].reason


def test_missing_and_unknown_artifacts(tmp_path):
    with pytest.raises(ArtifactError):
        benchmark([str(tmp_path / "nope")])
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ArtifactError):
        benchmark([str(tmp_path / "x.txt")])
    with pytest.raises(InvalidInputError):
        benchmark([str(tmp_path / "x.txt")], backends=["tensorflow"])


# --------------------------------------------------------------------------- availability


def test_explicit_unavailable_backend_exits_5_with_one_line(arts):
    r = run("bench", str(arts["fast"]), "--backend", "trt", *FAST_FLAGS)
    assert r.exit_code == 5
    # One message (however the CLI frames it), no traceback.
    assert r.output.count("backend trt on cuda is unavailable") == 1 and "Traceback" not in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_explicit_cuda_without_gpu_exits_5(arts):
    r = run("bench", str(arts["onnx"]), "--device", "cuda", *FAST_FLAGS)
    assert r.exit_code == 5 and "cuda" in r.output


def test_defaulted_unavailable_backend_is_skipped_with_reason(arts):
    report = benchmark([str(arts["bundle_engine"])], settings=FAST)
    assert [(r.backend, r.precision) for r in report.results] == [("ort", "fp32")]
    trt = [s for s in report.skipped if s.backend == "trt"]
    assert len(trt) == 1 and trt[0].reason
    r = run("bench", str(arts["bundle_engine"]), *FAST_FLAGS)
    assert r.exit_code == 0 and "skipped" in r.output


def test_precision_no_file_matches_exits_3(arts):
    r = run("bench", str(arts["bundle"]), "--precision", "int8", *FAST_FLAGS)
    assert r.exit_code == 3 and "int8" in r.output


def test_invalid_settings_exit_3(arts):
    assert run("bench", str(arts["onnx"]), "--min-iters", "0", "--quiet").exit_code == 3
    assert run("bench", str(arts["onnx"]), "--batch", "1,x", "--quiet").exit_code == 3


# --------------------------------------------------------------------------- comparison, speedups, outputs


def test_several_artifacts_give_speedups(arts, tmp_path):
    out = tmp_path / "r.json"
    r = run("bench", str(arts["slow"]), str(arts["onnx"]), "--backend", "ort", *FAST_FLAGS, "--json", str(out))
    assert r.exit_code == 0, r.output
    assert "speedup" in r.output and "1.00x" in r.output
    report = load_report(out)
    s = speedups(report)
    assert s[0] == 1.0 and s[1] is not None and s[1] > 1.0  # the tiny model is faster than the heavy one


def test_teacher_student_int8_in_one_command(arts, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Calib(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((1, 1, 16, 16), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    int8 = tmp_path / "student-int8.onnx"
    quantize_static(str(arts["onnx"]), str(int8), Calib(), quant_format=QuantFormat.QDQ)
    out = tmp_path / "r.json"
    r = run(
        "bench", str(arts["slow"]), str(arts["fast"]), str(int8), "--device", "cpu", *FAST_FLAGS, "--json", str(out)
    )
    assert r.exit_code == 0, r.output
    report = load_report(out)
    rows = {(x.name, x.backend): (x.precision, s) for x, s in zip(report.results, speedups(report))}
    assert rows[("slow/model", "ort")] == ("fp32", 1.0)  # the teacher is the reference
    assert rows[("student-int8.onnx", "ort")][0] == "int8" and rows[("student-int8.onnx", "ort")][1] > 1.0
    assert rows[("fast/model", "torch")][1] is not None


def test_backend_that_fits_no_artifact_exits_3(arts):
    r = run("bench", str(arts["onnx"]), "--backend", "torch", "--device", "cpu", *FAST_FLAGS)
    assert r.exit_code == 3 and "model directories" in r.output


def test_csv_and_markdown_written(arts, tmp_path):
    c, m = tmp_path / "b.csv", tmp_path / "b.md"
    r = run("bench", "run", str(arts["bundle_engine"]), *FAST_FLAGS, "--csv", str(c), "--markdown", str(m))
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(c.open()))
    assert [row["status"] for row in rows] == ["ok", "skipped"]
    assert float(rows[0]["p50_ms"]) > 0 and rows[0]["speedup"] == "1.0"
    md = m.read_text()
    assert "| artifact | backend |" in md and "bundle_engine/model.onnx" in md and "skipped:" in md


# --------------------------------------------------------------------------- the CI gate


def _result(name="m", p50=1.0, p90=1.2, batch=1) -> BenchResult:
    stats = Stats(
        n=10,
        total_s=0.01,
        mean_ms=p50,
        std_ms=0.0,
        min_ms=p50,
        max_ms=p90,
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p90,
        p99_ms=p90,
        cv=0.0,
        throughput=batch / p50 * 1e3,
    )
    return BenchResult(
        artifact=name,
        name=name,
        backend="ort",
        device="cpu",
        batch=batch,
        precision="fp32",
        stats=stats,
        model=ArtifactInfo(kind="onnx"),
    )


def _report(*results: BenchResult) -> BenchReport:
    env = Environment(timestamp="t", platform="p", python="3", cpu=cpu_info(cpuinfo=""))
    return BenchReport(environment=env, settings=BenchSettings(), results=list(results))


@pytest.mark.parametrize(
    ("p50", "p90", "status", "on"),
    [
        (1.05, 1.2, "ok", []),  # +5 %: under the relative threshold
        (1.2, 1.2, "regressed", ["p50"]),  # +20 % and +0.2 ms
        (1.0, 1.5, "regressed", ["p90"]),  # the tail regressed alone
        (0.8, 1.2, "improved", []),
    ],
)
def test_compare_reports_thresholds(p50, p90, status, on):
    (c,) = compare_reports(_report(_result()), _report(_result(p50=p50, p90=p90)), max_regression=0.1, min_abs_ms=0.05)
    assert c.status == status and c.regressed_on == on
    assert c.p50_ratio == pytest.approx(p50 / 1.0)


def test_compare_reports_absolute_floor_and_unmatched():
    base = _report(_result(p50=0.01, p90=0.012), _result(name="gone"))
    new = _report(_result(p50=0.02, p90=0.024), _result(name="fresh"))  # +100 % but only +0.01 ms
    comps = compare_reports(base, new, max_regression=0.1, min_abs_ms=0.05)
    assert [(c.name, c.status) for c in comps] == [("m", "ok"), ("fresh", "new"), ("gone", "missing")]
    assert not regressions(comps)
    assert regressions(compare_reports(base, new, max_regression=0.1, min_abs_ms=0.0))


def test_check_budget_and_parse_fraction():
    rep = _report(_result(p90=4.0), _result(name="big", p90=6.0))
    assert [v.name for v in check_budget(rep, 5.0)] == ["big"]
    with pytest.raises(InvalidInputError):
        check_budget(rep, 0)
    assert parse_fraction("10%") == pytest.approx(0.1)
    assert parse_fraction("0.1") == pytest.approx(0.1) and parse_fraction("10") == pytest.approx(0.1)
    with pytest.raises(InvalidInputError):
        parse_fraction("ten")


def test_gate_trips_on_slowed_artifact(arts, base_json):
    r = run(
        "bench",
        str(arts["slow"]),
        "--backend",
        "ort",
        "--device",
        "cpu",
        *FAST_FLAGS,
        "--baseline",
        str(base_json),
        "--max-regression",
        "10%",
        "--min-abs-ms",
        "0.05",
    )
    assert r.exit_code == 7, r.output
    assert "regressed" in r.output and "model [ort/cpu/b1/fp32]" in r.output


def test_gate_passes_identical_artifact(arts, base_json):
    # Same model, same settings: the only difference is noise. The absolute floor is raised to 1 ms, far
    # above this model's latency, so a busy machine cannot fail it while the slowed model above still does.
    r = run(
        "bench",
        str(arts["fast"]),
        "--backend",
        "ort",
        "--device",
        "cpu",
        *FAST_FLAGS,
        "--baseline",
        str(base_json),
        "--max-regression",
        "10%",
        "--min-abs-ms",
        "1",
    )
    assert r.exit_code == 0, r.output
    assert "against" in r.output


def test_budget_gate(arts):
    small = run("bench", str(arts["onnx"]), *FAST_FLAGS, "--budget-ms", "0.000001")
    assert small.exit_code == 7 and "budget" in small.output and "tiny.onnx" in small.output
    assert run("bench", str(arts["onnx"]), *FAST_FLAGS, "--budget-ms", "100000").exit_code == 0


def test_bench_compare_prints_ratios_and_gates(arts, base_json, tmp_path):
    slow = tmp_path / "slow.json"
    r = run("bench", str(arts["slow"]), "--backend", "ort", "--device", "cpu", *FAST_FLAGS, "--json", str(slow))
    assert r.exit_code == 0, r.output
    r = run("bench", "compare", str(base_json), str(slow))
    assert r.exit_code == 0, r.output  # no --max-regression: report only
    assert "p50 B/A" in r.output and "regressed" in r.output
    r = run("bench", "compare", str(base_json), str(slow), "--json", "-")
    (c,) = json.loads(r.stdout)
    assert c["status"] == "regressed" and c["p50_ratio"] > 2
    assert run("bench", "compare", str(base_json), str(slow), "--max-regression", "10%").exit_code == 7
    assert run("bench", "compare", str(base_json), str(base_json), "--max-regression", "10%").exit_code == 0


def test_bench_compare_bad_files_exit_4(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 99}')
    assert run("bench", "compare", str(bad), str(bad)).exit_code == 4
    assert run("bench", "compare", str(tmp_path / "none.json"), str(bad)).exit_code == 4
    with pytest.raises(ArtifactError):
        load_report(bad)


def test_both_spellings_and_help(arts):
    for args in (["bench", "--help"], ["bench", "run", "--help"], ["bench", "compare", "--help"]):
        r = run(*args)
        assert r.exit_code == 0 and "Example" in r.output
    r = run("bench", "--backend", "ort", str(arts["onnx"]), *FAST_FLAGS, "--json", "-")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["name"] == "tiny.onnx"


def test_csv_and_markdown_text_of_report():
    rep = _report(_result(), _result(name="b", p50=0.5))
    text = to_csv(rep)
    assert text.splitlines()[0].startswith("status,artifact,name") and len(text.splitlines()) == 3
    assert "| m | ort | cpu | 1 | fp32 |" in to_markdown(rep)


def test_duplicate_names_are_disambiguated(arts, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(arts["fast"], copy)
    report = benchmark([str(arts["fast"]), str(copy)], backends=["ort"], settings=FAST)
    assert len({r.name for r in report.results}) == 2


# --------------------------------------------------------------------------- GPU paths (skipped without one)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_uses_cuda_events(arts):
    from edgekd.bench import resolve_artifact
    from edgekd.bench._runners import Target
    from edgekd.bench._timing import CudaEventTimer, _timer_for
    from edgekd.bench._torch_runner import TorchRunner

    with TorchRunner() as runner:
        runner.load(Target(resolve_artifact(str(arts["fast"])), None, "fp32", "model"), "cuda", 4, FAST)
        assert isinstance(_timer_for(runner, FakeClock()), CudaEventTimer)
    report = benchmark([str(arts["fast"])], backends=["torch"], devices=["cuda"], batches=(1, 8), settings=FAST)
    for r in report.results:
        assert r.device == "cuda" and r.stats.p50_ms > 0
        assert r.memory.cuda_peak_allocated_bytes and r.memory.cuda_peak_allocated_bytes > 0
    assert report.environment.gpus and report.environment.gpus[0].name


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_cuda_graphs_and_half_precision(arts, precision):
    settings = FAST.model_copy(update={"cuda_graphs": True, "channels_last": True})
    report = benchmark(
        [str(arts["fast"])], backends=["torch"], devices=["cuda"], batches=(4,), precision=precision, settings=settings
    )
    (r,) = report.results
    assert r.precision == precision and r.options["cuda_graphs"] and r.stats.n >= FAST.min_iters


@pytest.mark.gpu
@needs_cuda
def test_ort_cuda_provider(arts):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(DependencyError):
            benchmark([str(arts["onnx"])], backends=["ort"], devices=["cuda"], settings=FAST)
        return
    report = benchmark([str(arts["onnx"])], backends=["ort"], devices=["cuda"], batches=(1, 8), settings=FAST)
    assert all(r.options["providers"][0] == "CUDAExecutionProvider" for r in report.results)


@pytest.mark.tensorrt
@needs_cuda
def test_native_tensorrt_engine(arts, tmp_path):
    pytest.importorskip("tensorrt")
    engine = _build_engine(arts["onnx"], tmp_path / "tiny.engine")
    report = benchmark([str(engine)], backends=["trt"], batches=(1, 8, 16), settings=FAST)
    assert [r.batch for r in report.results] == [1, 8]
    assert "profile" in report.skipped[0].reason  # batch 16 is outside the engine's profile


def test_bench_config_is_the_settings_plus_what_to_run_and_the_gate():
    from edgekd.bench import BenchConfig, GateConfig

    cfg = BenchConfig(batches="1,8", backends="ort", cv_warn="15%", gate={"max_regression": "5%"})
    assert (cfg.batches, cfg.backends, cfg.cv_warn, cfg.gate.max_regression) == ([1, 8], ["ort"], 0.15, 0.05)
    assert cfg.settings() == BenchSettings(cv_warn=0.15)  # the measurement defaults are BenchSettings'
    assert GateConfig().active is False and GateConfig(budget_ms=1).active
    for bad in ({"backends": "onnxrt"}, {"batches": [0]}, {"gate": {"max_regresion": 0.1}}):
        with pytest.raises((InvalidInputError, ValueError)):
            BenchConfig.model_validate(bad)


def test_cli_bench_reads_a_config_file_and_flags_override_it(arts, tmp_path):
    (tmp_path / "bench.yaml").write_text(
        "bench:\n  backends: [ort]\n  batches: [1, 2]\n  min_iters: 12\n  gate:\n    budget_ms: 100000\n"
    )
    out = tmp_path / "b.json"
    r = run("bench", str(arts["onnx"]), "--config", str(tmp_path / "bench.yaml"), *FAST_FLAGS, "--json", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert sorted({x["batch"] for x in report["results"]}) == [1, 2] and {x["backend"] for x in report["results"]} == {
        "ort"
    }
    assert report["settings"]["min_iters"] == 15 and report["config"]["gate"]["budget_ms"] == 100000  # flag > file
    r = run("bench", str(arts["onnx"]), "--config", str(tmp_path / "bench.yaml"), *FAST_FLAGS, "--budget-ms", "1e-9")
    assert r.exit_code == 7, r.output
    (tmp_path / "bad.yaml").write_text("batch: [1]\n")
    r = run("bench", str(arts["onnx"]), "--config", str(tmp_path / "bad.yaml"), *FAST_FLAGS)
    assert r.exit_code == 3 and "batch" in r.output
