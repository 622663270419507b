"""INT8 by the CPU's instruction set: classes, targets, reference kernels, saturation, the scheme choice, the
receiving side (verify, bench, predict/serve), and the AVX2 path under QEMU user-mode emulation.

The saturation tests use a model built to overflow: a MatMul whose 64 inputs quantize near 255 and whose first
column's weights all quantize to 127, so every pair of u8 x s8 products (2 x 255 x 127 = 64 770) overflows the
int16 that AVX2's ``vpmaddubsw`` adds them in; the second column has every other weight 0 (no overflow) and a
bias that makes it lose only when the first column is saturated. The expected classes come from exact arithmetic
(ONNX's own reference evaluator), never from the digits of this CPU.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgekd._cpu import INT8_FLAGS, cpu_isa, isa_class, native_target
from edgekd.cli import app
from edgekd.errors import InvalidInputError, VerificationError
from edgekd.export import BundleFile, Precision, Reference, check_isa, ort_session, verify_bundle, write_bundle
from edgekd.modeldir import load_model_dir
from edgekd.quantize import (
    SCHEMES,
    TARGETS,
    CalibrationReader,
    QuantizeConfig,
    QuantTarget,
    choose_scheme,
    prepare_onnx,
    qdq_summary,
    quantize_model_dir,
    quantize_onnx,
    resolve_target,
    split_inputs,
)
from edgekd.quantize._targets import candidates, native_on

from .conftest import SYNTH

runner = CliRunner()
HERE = cpu_isa().isa
SATURATES = HERE in ("x86-avx2", "x86-sse")  # x86 without VNNI: u8 x s8 pairs add in a saturating int16
K = 64


def _saturating_model(path):
    w = np.zeros((K, 2), np.float32)
    w[:, 0] = 1.0
    w[0::2, 1] = 1.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["logits"])],
        "saturates",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", K])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([0.0, 5.0], np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def sat(tmp_path_factory):
    """The overflowing model in FP32 and in every scheme, with its inputs (all near 1)."""
    work = tmp_path_factory.mktemp("sat")
    fp32 = _saturating_model(work / "fp32.onnx")
    x = np.random.default_rng(0).uniform(0.9, 1.0, (32, K)).astype(np.float32)
    files = {n: quantize_onnx(fp32, work / f"{n}.onnx", SCHEMES.get(n), CalibrationReader(x)) for n in SCHEMES.names()}
    return {"fp32": fp32, "x": x, "files": files, "work": work}


def _run(path, x, kernels="native"):
    return ort_session(path, kernels=kernels).run(None, {"input": x})[0]


@pytest.mark.parametrize(
    "arch,flags,expected",
    [
        ("x86_64", {"sse4_1", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}, "x86-vnni"),
        ("x86_64", {"sse4_1", "avx2", "fma", "avx_vnni"}, "x86-vnni"),
        ("x86_64", {"sse4_1", "avx2", "avx512f", "amx_int8"}, "x86-vnni"),
        ("x86_64", {"sse4_1", "avx2", "fma", "avx512f", "avx512bw"}, "x86-avx2"),  # Skylake-SP: no VNNI
        ("x86_64", {"sse4_1", "avx2", "fma"}, "x86-avx2"),
        ("AMD64", {"sse4_1"}, "x86-sse"),
        ("aarch64", {"asimddp"}, "arm64-dotprod"),
        ("arm64", set(), "arm64"),
        ("riscv64", set(), "other"),
    ],
)
def test_isa_class_from_flags(arch, flags, expected):
    assert isa_class(arch, flags) == expected


def test_cpu_info_comes_from_cpuid():
    info = cpu_isa()
    assert set(info.flags) <= set(INT8_FLAGS) and info.isa == isa_class(info.arch, set(info.flags))
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        pytest.skip("this NumPy does not expose its CPU features")
    assert ("avx2" in info.flags) == bool(features.get("AVX2"))
    assert ("avx512_vnni" in info.flags) == bool(features.get("AVX512VNNI"))
    assert HERE in info.describe()


def test_targets_resolve_by_cpu_class():
    assert {"cpu-x86", "cpu-x86-vnni", "cpu-x86-avx2", "cpu-arm", "tensorrt"} <= set(TARGETS.names())
    assert resolve_target("cpu-x86", "x86-vnni").name == "cpu-x86-vnni"
    assert resolve_target("cpu-x86", "x86-avx2").name == "cpu-x86-avx2"
    assert resolve_target("cpu-x86", "x86-sse").name == "cpu-x86-avx2"
    assert resolve_target("cpu-arm", "x86-avx2").name == "cpu-arm"
    with pytest.raises(InvalidInputError, match="cpu-x86-vnni or cpu-x86-avx2"):
        resolve_target("cpu-x86", "arm64-dotprod")
    avx2 = TARGETS.get("cpu-x86-avx2")
    assert [s.name for s in candidates(avx2, "x86-avx2")] == ["u8s8-rr", "u8u8", "s8s8"]
    assert [s.name for s in candidates(avx2, "x86-vnni")] == ["u8s8-rr", "u8u8"]  # only the exact-by-construction
    assert native_on(TARGETS.get("cpu-x86-vnni"), "x86-vnni") and not native_on(TARGETS.get("cpu-x86-vnni"), "x86-avx2")
    assert not native_on(TARGETS.get("tensorrt"), HERE)
    assert native_target("x86-avx2") == "cpu-x86-avx2" and native_target("other") is None


def _initializer(path, name):
    (init,) = [i for i in onnx.load(str(path)).graph.initializer if i.name == name]
    return init.data_type, numpy_helper.to_array(init)


def test_schemes_store_what_they_say(sat):
    """The MatMul weight ``W`` as each scheme stores it (the bias Add's constant is an activation input here)."""
    assert _initializer(sat["files"]["u8s8"], "input_zero_point")[0] == TensorProto.UINT8
    assert _initializer(sat["files"]["s8s8"], "input_zero_point")[0] == TensorProto.INT8
    dtype, w = _initializer(sat["files"]["u8s8"], "W_quantized")
    assert dtype == TensorProto.INT8 and np.abs(w).max() == 127
    dtype, w = _initializer(sat["files"]["u8s8-rr"], "W_quantized")
    assert dtype == TensorProto.INT8 and np.abs(w).max() <= 64  # 7-bit weights: no int16 overflow
    assert _initializer(sat["files"]["u8u8"], "W_quantized")[0] == TensorProto.UINT8
    assert qdq_summary(sat["files"]["s8s8-sym"])["nonzero_zero_points"] == 0


@pytest.mark.parametrize("scheme", ["u8s8", "u8s8-rr", "u8u8", "s8s8"])
def test_reference_kernels_compute_exact_qdq_arithmetic(sat, scheme):
    """ORT with graph optimisation off equals ONNX's reference evaluator (an independent implementation)."""
    from onnx.reference import ReferenceEvaluator

    x = sat["x"][:8]
    model = onnx.load(str(sat["files"][scheme]))
    for opset in model.opset_import:  # ONNX's evaluator implements Q/DQ from opset 19 (same semantics per tensor)
        opset.version = max(opset.version, 21) if opset.domain in ("", "ai.onnx") else opset.version
    model.ir_version = max(model.ir_version, 10)
    expected = ReferenceEvaluator(model).run(None, {"input": x})[0]
    np.testing.assert_allclose(_run(sat["files"][scheme], x, "reference"), expected, rtol=1e-4, atol=1e-3)


def test_int8_kernels_of_this_cpu_class(sat):
    """U8S8 is exact with VNNI and overflows without it; 7-bit weights and U8U8 are exact on every x86 CPU."""
    x = sat["x"]
    exact = _run(sat["files"]["u8s8"], x, "reference")
    assert (exact.argmax(1) == 0).all()  # exact arithmetic: the first column wins on every sample
    native = _run(sat["files"]["u8s8"], x)
    if SATURATES:
        assert (native.argmax(1) == 1).all(), "U8S8 on a CPU without VNNI should overflow on this model"
    elif HERE == "x86-vnni":
        np.testing.assert_allclose(native, exact, rtol=1e-3, atol=1e-2)
    for name in ("u8s8-rr", "u8u8"):
        ref = _run(sat["files"][name], x, "reference")
        np.testing.assert_allclose(_run(sat["files"][name], x), ref, rtol=1e-3, atol=1e-2)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory):
    import torch  # noqa: F401  (the model runs in torch for the reference logits)

    from edgekd.data import load_data
    from edgekd.export import export_onnx, torch_logits

    model, card = load_model_dir(tiny_model_dir)
    data = load_data(SYNTH)
    work = tmp_path_factory.mktemp("tiny")
    export_onnx(model, card, work / "model.onnx")
    pre = prepare_onnx(work / "model.onnx", work / "model.pre.onnx")
    calib, _ = split_inputs(data, "train", card.preprocess, n=64, seed=0)
    x, _ = split_inputs(data, "test", card.preprocess, n=32, spread=True)
    return {
        "pre": pre,
        "fp32": work / "model.onnx",
        "calib": calib,
        "x": x,
        "ref": torch_logits(model, x),
        "card": card,
        "dir": tiny_model_dir,
    }


def test_choose_scheme_times_the_exact_candidates_interleaved(tiny, tmp_path):
    calls = []

    def fake_latency(paths, *, batch, seconds):
        calls.append(([p.name for p in paths], batch))
        # s8s8 the fastest, u8u8 next: s8s8 can saturate on AVX2, so the fastest exact scheme must win
        return [(0.5 if "s8s8" in p.name else 1.0 if "u8u8" in p.name else 2.0, 2) for p in paths]

    target = TARGETS.get("cpu-x86-avx2")
    dst, rec = choose_scheme(
        tiny["pre"],
        tmp_path,
        target,
        CalibrationReader(tiny["calib"]),
        x=tiny["x"],
        ref=tiny["ref"],
        card=tiny["card"],
        latency=fake_latency,
        fp32=tiny["fp32"],
    )
    assert dst.is_file() and rec["target"] == "cpu-x86-avx2" and rec["isa"] == HERE
    if native_on(target):
        assert rec["kernels"] == "native" and [t["scheme"] for t in rec["trials"]] == ["u8s8-rr", "u8u8", "s8s8"]
        passed = [t["scheme"] for t in rec["trials"] if t["passed"]]
        if {"u8s8-rr", "u8u8"} <= set(passed):
            assert rec["chosen"] == "u8u8" and "fastest" in rec["reason"]
            rounds = [names for names, b in calls if b == 1]
            assert len(rounds) == 2 and rounds[1] == rounds[0][::-1]  # two rounds, alternating order
            if "s8s8" in passed:  # timed and recorded, faster, but not chosen
                assert "s8s8 ran faster but can saturate" in rec["reason"] and rec["trials"][2]["latency_ms"]
            assert set(rec["fp32_latency_ms"]) == {"1", "32"}
    else:  # built for another class: reference kernels, the safe schemes in order, nothing timed
        assert rec["kernels"] == "reference" and calls == [] and rec["chosen"] == "u8s8-rr"
        assert "verify on the device" in rec["reason"]


def test_choose_scheme_names_kernel_overflow_as_the_cause(sat, tiny, tmp_path):
    """A U8S8-only target run natively on a CPU without VNNI: parity fails, exact arithmetic passes."""
    pre = prepare_onnx(sat["fp32"], tmp_path / "sat.pre.onnx")
    x = sat["x"]
    ref = ort_session(sat["fp32"]).run(None, {"input": x})[0]
    only_u8s8 = QuantTarget(name=native_target(HERE) or "none", schemes=["u8s8"], isa=HERE)
    work = tmp_path / "w"
    work.mkdir()
    if not SATURATES:
        dst, rec = choose_scheme(pre, work, only_u8s8, CalibrationReader(x), x=x, ref=ref, card=tiny["card"])
        assert rec["chosen"] == "u8s8"
        return
    with pytest.raises(VerificationError, match="overflow") as e:
        choose_scheme(pre, work, only_u8s8, CalibrationReader(x), x=x, ref=ref, card=tiny["card"])
    assert "--sensitivity" in e.value.hint


def _other_class_target() -> str:
    return "cpu-x86-vnni" if HERE != "x86-vnni" else "cpu-x86-avx2"


def test_quantize_records_the_instruction_set(tiny, tmp_path):
    from edgekd.export import read_manifest

    cfg = QuantizeConfig(method="ptq", target="cpu-x86", calib_samples=64, parity_samples=32)
    if not HERE.startswith("x86"):
        pytest.skip("cpu-x86 resolves on x86 CPUs only")
    res = quantize_model_dir(tiny["dir"], tmp_path / "native", cfg, data=SYNTH, progress=False)
    m = read_manifest(tmp_path / "native")
    assert m.target == native_target(HERE) == res.target and m.isa["requested"] == "cpu-x86"
    assert m.isa["verified_isa"] == HERE and m.isa["kernels"] == "native"
    assert m.isa["scheme"] in TARGETS.get(m.target).schemes and m.isa["built_on"]["flags"] == cpu_isa().flags
    assert next(p for p in m.parity if p.precision is Precision.INT8).kernels == "native"
    assert check_isa(tmp_path / "native") is None  # checked on this class: nothing to re-check
    other = quantize_model_dir(
        tiny["dir"],
        tmp_path / "other",
        cfg.model_copy(update={"target": _other_class_target()}),
        data=SYNTH,
        progress=False,
    )
    m = read_manifest(tmp_path / "other")
    assert m.isa["verified_isa"] is None and m.isa["kernels"] == "reference" and other.scheme_choice["trials"]
    assert next(p for p in m.parity if p.precision is Precision.INT8).kernels == "reference"


def _bundle_of(sat, tiny, scheme: str, out, verified_isa: str):
    """A bundle whose INT8 file is the overflowing model in ``scheme``, recorded as checked on ``verified_isa``."""
    x = sat["x"]
    ref = ort_session(sat["fp32"]).run(None, {"input": x})[0]
    files = [
        BundleFile(source=sat["files"][scheme], name="model.int8.onnx", precision=Precision.INT8),
        BundleFile(source=sat["fp32"], name="model.onnx", precision=Precision.FP32),
    ]
    isa = {
        "target": "cpu-x86-vnni" if verified_isa == "x86-vnni" else "cpu-x86-avx2",
        "scheme": scheme,
        "verified_isa": verified_isa,
        "kernels": "native",
        "built_on": {"isa": verified_isa},
    }
    write_bundle(
        out, card=tiny["card"], files=files, parity=[], target=isa["target"], reference=Reference(x, ref), isa=isa
    )
    return out


def test_bundle_checked_on_another_class_is_rechecked_and_refused_here(sat, tiny, tmp_path):
    other = "x86-vnni" if HERE != "x86-vnni" else "x86-avx2"
    bad = _bundle_of(sat, tiny, "u8s8", tmp_path / "u8s8", other)
    good = _bundle_of(sat, tiny, "u8s8-rr", tmp_path / "rr", other)
    assert "parity passed" in check_isa(good)
    verify_bundle(good)
    if not SATURATES:
        assert "parity passed" in check_isa(bad)
        return
    own = native_target(HERE)
    with pytest.raises(VerificationError) as e:
        check_isa(bad)
    assert f"--target {own}" in e.value.hint and other in e.value.message and HERE in e.value.message
    with pytest.raises(VerificationError, match=f"checked on {other}"):
        verify_bundle(bad)
    for args in (["verify", str(bad)], ["bench", str(bad), "--batch", "1", "--min-s", "0.01", "--quiet"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 6 and f"--target {own}" in r.output and "Traceback" not in r.output, r.output
    from edgekd.serve import load_model

    with pytest.raises(VerificationError, match="INT8"):
        load_model(bad, verify=False)


QEMU_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from edgekd._cpu import cpu_isa
    from edgekd.errors import VerificationError
    from edgekd.export import check_isa, ort_session, parity_check, Precision
    from edgekd.modeldir import load_model_dir
    from edgekd.quantize import CalibrationReader, choose_scheme, resolve_target

    args = json.loads(sys.argv[1])
    out = {"isa": cpu_isa().isa}
    for name, bundle in args["bundles"].items():
        try:
            out[name] = "passed" if check_isa(bundle) else "nothing"
        except VerificationError as e:
            out[name] = "refused: " + e.hint
    t = np.load(args["tiny"])
    _, card = load_model_dir(args["dir"])
    work = Path(args["work"])
    dst, rec = choose_scheme(Path(args["pre"]), work, resolve_target("cpu-x86"), CalibrationReader(t["calib"]),
                             x=t["x"], ref=t["ref"], card=card)
    res = parity_check(dst, None, card, samples=t["x"], reference_logits=t["ref"], precision=Precision.INT8)
    out.update(target=rec["target"], chosen=rec["chosen"], kernels=rec["kernels"], parity=res.passed)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(
    shutil.which("qemu-x86_64") is None or platform.machine() not in ("x86_64", "AMD64"),
    reason="needs qemu-x86_64 (Debian's qemu-user) on an x86-64 machine",
)
def test_avx2_int8_path_under_qemu_haswell(sat, tiny, tmp_path):
    """Whatever CPU runs the suite, the AVX2 path runs on an emulated Haswell (AVX2, no AVX-512, no VNNI)."""
    bad = _bundle_of(sat, tiny, "u8s8", tmp_path / "u8s8", "x86-vnni")
    good = _bundle_of(sat, tiny, "u8s8-rr", tmp_path / "rr", "x86-vnni")
    np.savez(tmp_path / "tiny.npz", calib=tiny["calib"], x=tiny["x"], ref=tiny["ref"])
    (tmp_path / "work").mkdir()
    args = {
        "bundles": {"u8s8": str(bad), "u8s8-rr": str(good)},
        "tiny": str(tmp_path / "tiny.npz"),
        "dir": str(tiny["dir"]),
        "pre": str(tiny["pre"]),
        "work": str(tmp_path / "work"),
    }
    proc = subprocess.run(
        ["qemu-x86_64", "-cpu", "Haswell", sys.executable, "-c", QEMU_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=900,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(line.removeprefix("RESULT "))
    assert out["isa"] == "x86-avx2"  # CPUID of the emulated CPU, not the host's /proc/cpuinfo
    assert out["u8s8"] == "refused: rebuild it for this CPU: edgekd quantize MODEL_DIR --target cpu-x86-avx2"
    assert out["u8s8-rr"] == "passed"
    assert out["target"] == "cpu-x86-avx2" and out["kernels"] == "native" and out["parity"] is True
