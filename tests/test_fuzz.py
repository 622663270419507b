"""Fuzzing the parsers and readers of user input: whatever the input, the outcome is a value or an EdgeKDError.

Property-based tests (hypothesis) feed arbitrary text to the data-spec, model-name and loss-spec parsers, arbitrary
YAML to the config readers and arbitrary JSON to the benchmark-baseline reader; the malformed-file tests feed
random bytes, truncations and wrong types to the npz, CSV, image, ONNX, manifest, model-card and weights readers.
Every failure must be an :class:`~edgekd.errors.EdgeKDError` whose exit code is a documented user-error code
(3, 4, 5 or 6) and whose message is one line without a pydantic dump or numpy's pickle advice. Example counts
are modest so the file runs in well under 30 s.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from PIL import Image

from edgekd._config import read_yaml, resolve_options
from edgekd.bench._env import cpu_info
from edgekd.bench._report import load_report, write_json
from edgekd.bench._schema import ArtifactInfo, BenchReport, BenchResult, BenchSettings, Environment, Stats
from edgekd.data import load_data, parse_data_spec
from edgekd.data._spec import format_data_spec
from edgekd.distill import LOSSES, TrainConfig, parse_loss, resolve_run_settings
from edgekd.errors import EdgeKDError, InvalidInputError
from edgekd.export import Manifest, lint_onnx, read_manifest
from edgekd.modeldir import load_model_dir
from edgekd.specs import ModelSpec, Task
from edgekd.students import SOURCES, build_model, parse_model_name
from edgekd.teachers import load_checkpoint_state

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
)
FEW = settings(FUZZ, max_examples=30)
USER_ERROR_CODES = {3, 4, 5, 6}
LEAKS = ("allow_pickle", "pickle.load", "errors.pydantic.dev", "validation error for", "Traceback")


def outcome(fn, *args, **kwargs):
    """Call ``fn``; return its value or the EdgeKDError it raised, after checking that error's shape."""
    try:
        return fn(*args, **kwargs)
    except EdgeKDError as e:
        assert e.exit_code in USER_ERROR_CODES, f"exit code {e.exit_code} for {e!r}"
        assert "\n" not in e.message and "\n" not in (e.hint or ""), f"multi-line message: {e.message!r}"
        assert not any(leak in str(e) for leak in LEAKS), f"message leaks internals: {e}"
        return e


junk = st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _mutate(obj, path: list, value):
    """A deep copy of ``obj`` with the item at ``path`` (indices into dicts/lists, wrapped) replaced."""
    obj = json.loads(json.dumps(obj))
    if not path or not isinstance(obj, (dict, list)) or not obj:
        return value
    keys = list(obj) if isinstance(obj, dict) else list(range(len(obj)))
    key = keys[path[0] % len(keys)]
    obj[key] = _mutate(obj[key], path[1:], value)
    return obj


mutation_paths = st.lists(st.integers(0, 50), min_size=1, max_size=4)


# ------------------------------------------------------------------------------------------- data spec parser


@FUZZ
@given(st.text(max_size=60))
def test_data_spec_parser_total_and_round_trips(text):
    parsed = outcome(parse_data_spec, text)
    if isinstance(parsed, EdgeKDError):
        assert isinstance(parsed, InvalidInputError)
        return
    source, arg, options = parsed
    assert source and source == source.strip().lower() and ":" not in source
    assert parse_data_spec(format_data_spec(source, arg, options)) == parsed


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["classes", "n", "size", "channels", "seed", "task", "val", "bogus"]),
        st.one_of(st.integers(-3, 40).map(str), st.text(max_size=6).filter(lambda s: "," not in s)),
        max_size=5,
    )
)
def test_load_data_synthetic_options_fuzzed(options):
    result = outcome(load_data, format_data_spec("synthetic", None, options))
    if isinstance(result, EdgeKDError):
        assert result.exit_code == 3
    else:
        assert len(result.train) > 0 and result.num_classes >= 2


@FEW
@given(st.sampled_from(["medmnist", "csv", "imagefolder"]), st.text(min_size=1, max_size=20))
def test_load_data_missing_files_exit_4(work, source, name):
    name = "".join(c for c in name if c.isalnum()) or "x"
    result = outcome(load_data, f"{source}:{work / 'absent' / name}")
    assert isinstance(result, EdgeKDError) and result.exit_code == 4


# ------------------------------------------------------------------------------------------- model name parser


@FUZZ
@given(st.text(max_size=40))
def test_model_name_parser_total(text):
    parsed = outcome(parse_model_name, text)
    if not isinstance(parsed, EdgeKDError):
        source, bare = parsed
        assert source in SOURCES and bare and bare == bare.strip()


@FUZZ
@given(
    st.sampled_from(["small:tinycnn", "small:resnet8", "small:nope", "tv:", "resnet8", "timm:"]),
    st.dictionaries(
        st.sampled_from(["widths", "drop_rate", "zero_init_residual", "num_classes", "bogus"]), json_values, max_size=2
    ),
    st.integers(1, 5),
)
def test_build_model_with_fuzzed_kwargs(name, kwargs, num_classes):
    result = outcome(build_model, ModelSpec(name=name, num_classes=num_classes, in_chans=1, kwargs=kwargs))
    assert isinstance(result, (EdgeKDError, __import__("torch").nn.Module))


# ------------------------------------------------------------------------------------------- loss spec parser


@FUZZ
@given(st.text(max_size=40))
def test_loss_parser_total_text(text):
    term = outcome(parse_loss, text)
    if not isinstance(term, EdgeKDError):
        assert parse_loss(str(term)) == term


@FUZZ
@given(
    st.sampled_from(sorted(LOSSES.names()) + ["nope", "KD", ""]),
    st.one_of(st.none(), st.floats(allow_nan=True), st.text(max_size=5)),
    st.dictionaries(
        st.sampled_from(["T", "alpha", "beta", "s", "t", "teacher", "warmup", "bogus", ""]),
        st.one_of(st.floats(), st.integers(-3, 9), st.text(max_size=5), st.booleans()).map(str),
        max_size=3,
    ),
)
def test_loss_parser_structured(name, weight, params):
    text = name + ("" if weight is None else f":{weight}") + "".join(f",{k}={v}" for k, v in params.items())
    term = outcome(parse_loss, text)
    if isinstance(term, EdgeKDError):
        return
    assert term.weight >= 0 and parse_loss(str(term)) == term  # the lineage string reads back exactly
    outcome(term.build)


# ------------------------------------------------------------------------------------------- YAML configs

config_keys = st.sampled_from(
    [
        "epochs",
        "lr",
        "batch_size",
        "model",
        "teacher",
        "loss",
        "seed",
        "augment",
        "input_size",
        "cache_teacher",
        "teacher_weight",
        "warmup_epochs",
        "bogus",
    ]
)


@FUZZ
@given(
    st.one_of(
        junk,
        st.dictionaries(config_keys, json_values, max_size=4).map(lambda d: yaml.safe_dump(d).encode()),
        st.sampled_from(
            [
                b"!!python/object/apply:os.system ['touch pwned']",
                b"[1, 2",
                b"- a\n- b",
                b"a: &x [*x]",
                b"epochs: .inf",
                b"lr: .nan",
                b"\x00\x01",
                b"\xff\xfe",
                b"? [a]\n: 1",
            ]
        ),
    )
)
def test_yaml_config_readers(work, content):
    path = _write(work / "config.yaml", content)
    outcome(read_yaml, path)
    outcome(resolve_options, TrainConfig, path, {}, allowed=("model", "teacher", "loss", "input_size", "bogus"))
    settings_ = outcome(resolve_run_settings, {"model": "small:tinycnn"}, config=path)
    assert not (work / "pwned").exists()
    if not isinstance(settings_, EdgeKDError):
        assert settings_.student


# ------------------------------------------------------------------------------------------- bench baseline


def _valid_report() -> dict:
    stats = Stats(
        n=10,
        total_s=0.01,
        mean_ms=1.0,
        std_ms=0.0,
        min_ms=1.0,
        max_ms=1.2,
        p50_ms=1.0,
        p90_ms=1.2,
        p95_ms=1.2,
        p99_ms=1.2,
        cv=0.0,
        throughput=1000.0,
    )
    result = BenchResult(
        artifact="m",
        name="m",
        backend="ort",
        device="cpu",
        batch=1,
        precision="fp32",
        stats=stats,
        model=ArtifactInfo(kind="onnx"),
    )
    env = Environment(timestamp="t", platform="p", python="3", cpu=cpu_info(cpuinfo=""))
    return json.loads(BenchReport(environment=env, settings=BenchSettings(), results=[result]).model_dump_json())


VALID_REPORT = _valid_report()


@FUZZ
@given(
    st.one_of(
        junk,
        json_values.map(lambda v: json.dumps(v).encode()),
        st.tuples(mutation_paths, json_values).map(lambda pv: json.dumps(_mutate(VALID_REPORT, *pv)).encode()),
    )
)
def test_bench_baseline_reader(work, content):
    report = outcome(load_report, _write(work / "base.json", content))
    if isinstance(report, EdgeKDError):
        assert report.exit_code == 4
    else:
        write_json(report, work / "again.json")  # a report that loads also writes and reloads
        assert load_report(work / "again.json") == report


# ------------------------------------------------------------------------------------------- malformed npz


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # allow_pickle defaults to True on save: object arrays get written
    return buf.getvalue()


VALID_NPZ = {
    **{f"{s}_images": np.zeros((4, 6, 6), np.uint8) for s in ("train", "val", "test")},
    **{f"{s}_labels": np.array([[0], [1], [0], [1]]) for s in ("train", "val", "test")},
}
array_values = st.one_of(
    st.builds(
        lambda dtype, shape, fill: np.full(shape, fill).astype(dtype),
        st.sampled_from([np.uint8, np.int64, np.int8, np.uint16, np.float32, np.bool_, np.complex64]),
        st.lists(st.integers(0, 5), max_size=4).map(tuple),
        st.integers(-2, 300),
    ),
    st.just(np.array([1, "a", None], dtype=object)),
    st.just(np.array(["a", "b"])),
)


@FUZZ
@given(
    st.one_of(
        junk,
        st.integers(0, 2000).map(lambda n: _npz_bytes(VALID_NPZ)[:n]),
        st.dictionaries(st.sampled_from(sorted(VALID_NPZ)), array_values, max_size=3).map(
            lambda over: _npz_bytes({**VALID_NPZ, **over})
        ),
    )
)
def test_malformed_npz(work, content):
    result = outcome(load_data, f"medmnist:{_write(work / 'data.npz', content)}")
    if not isinstance(result, EdgeKDError):
        for split in ("train", "val", "test"):
            for i in range(len(result.split(split))):
                image, _ = result.split(split)[i]
                assert image.shape == (result.channels, *result.image_size)


# ------------------------------------------------------------------------------------------- malformed CSV / images


def _png(path: Path, value: int, size=(6, 6), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size[1], size[0]), value if mode in ("L", "I;16") else (value,) * len(mode)).save(path)


@pytest.fixture(scope="module")
def image_tree(work) -> Path:
    root = work / "tree"
    for i in range(4):
        _png(root / "img" / f"{i}.png", 40 * i)
    return root


csv_cells = st.sampled_from(
    [
        "img/0.png",
        "img/1.png",
        "img/2.png",
        "../img/0.png",
        "/etc/hostname",
        "img",
        "img/none.png",
        "a",
        "b",
        "A",
        "1",
        "1.0",
        "0.5",
        "",
        "train",
        "val",
        "test",
        "nan",
        "path",
        "label",
        '"',
        "é",
    ]
)


@FUZZ
@given(
    st.one_of(
        junk,
        st.lists(st.lists(csv_cells, min_size=1, max_size=4), max_size=6).map(
            lambda rows: "\n".join(",".join(r) for r in rows).encode()
        ),
    ),
    st.sampled_from(["", ",size=8", ",val=0", ",channels=3", ",depth=16"]),
)
def test_malformed_csv(image_tree, content, options):
    table = _write(image_tree / "labels.csv", content)
    result = outcome(load_data, f"csv:{table}{options}")
    if not isinstance(result, EdgeKDError):
        assert all(result.train[i][0].shape[0] == result.channels for i in range(len(result.train)))


MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F", "LAB", "HSV"]


def _image_bytes(mode: str, size: tuple[int, int], fmt: str) -> bytes:
    im = Image.new(mode, size)
    buf = io.BytesIO()
    try:
        im.save(buf, fmt)
    except (OSError, ValueError, KeyError):
        im.convert("RGB").save(buf := io.BytesIO(), fmt)
    return buf.getvalue()


@FUZZ
@given(
    st.one_of(
        junk,
        st.builds(
            _image_bytes,
            st.sampled_from(MODES),
            st.tuples(st.integers(1, 12), st.integers(1, 12)),
            st.sampled_from(["PNG", "TIFF", "BMP", "JPEG", "WEBP", "GIF"]),
        ),
        st.integers(0, 120).map(lambda n: _image_bytes("L", (6, 6), "PNG")[:n]),
    ),
    st.sampled_from(["", ",size=8", ",channels=1", ",channels=3", ",depth=16"]),
)
def test_malformed_images(work, content, options):
    root = work / "folder"
    shutil.rmtree(root, ignore_errors=True)
    for c in ("a", "b"):
        for i in range(3):
            _png(root / c / f"{i}.png", 50 * i + 10)
    _write(root / "b" / "odd.png", content)
    result = outcome(load_data, f"imagefolder:{root}{options}")
    if not isinstance(result, EdgeKDError):  # what loads decodes, every image, at the bundle's geometry
        for split in ("train", "val", "test"):
            ds = result.split(split)
            for i in range(len(ds)):
                item = outcome(ds.__getitem__, i)
                assert not isinstance(item, EdgeKDError), item  # checked at load time, never mid-training
                assert tuple(item[0].shape) == (result.channels, *result.image_size)


# ------------------------------------------------------------------------------------------- ONNX, manifest, model dir


def _tiny_onnx() -> bytes:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1, 4, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [2.0])
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["logits"])], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


VALID_ONNX = _tiny_onnx()


@FUZZ
@given(
    st.one_of(
        junk,
        st.integers(0, len(VALID_ONNX)).map(lambda n: VALID_ONNX[:n]),
        st.tuples(st.integers(0, len(VALID_ONNX) - 1), st.integers(0, 255)).map(
            lambda iv: VALID_ONNX[: iv[0]] + bytes([iv[1]]) + VALID_ONNX[iv[0] + 1 :]
        ),
    )
)
def test_malformed_onnx(work, content):
    findings = outcome(lint_onnx, _write(work / "model.onnx", content))
    assert isinstance(findings, (list, EdgeKDError))


def test_valid_tiny_onnx_lints(work):
    onnx.checker.check_model(onnx.load_from_string(VALID_ONNX))
    assert isinstance(lint_onnx(_write(work / "ok.onnx", VALID_ONNX)), list)


VALID_MANIFEST = json.loads(
    Manifest(name="small:tinycnn", target="onnxruntime", task=Task.BINARY, label_names=["a", "b"]).model_dump_json()
)


@FUZZ
@given(
    st.one_of(
        junk,
        json_values.map(lambda v: json.dumps(v).encode()),
        st.tuples(mutation_paths, json_values).map(lambda pv: json.dumps(_mutate(VALID_MANIFEST, *pv)).encode()),
    )
)
def test_malformed_manifest(work, content):
    _write(work / "bundle" / "manifest.json", content)
    result = outcome(read_manifest, work / "bundle")
    assert isinstance(result, (Manifest, EdgeKDError))
    if isinstance(result, EdgeKDError):
        assert result.exit_code == 4


@FEW
@given(st.tuples(mutation_paths, json_values))
def test_mutated_model_card(tiny_model_dir, work, mutation):
    target = work / "mdir"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(tiny_model_dir, target, ignore=shutil.ignore_patterns("checkpoint"))
    card = json.loads((target / "edgekd.json").read_text())
    (target / "edgekd.json").write_text(json.dumps(_mutate(card, *mutation)))
    result = outcome(load_model_dir, target)
    if isinstance(result, EdgeKDError):
        assert result.exit_code in (4, 5)


@FEW
@given(st.one_of(junk, st.integers(0, 4000)))
def test_malformed_weights(tiny_model_dir, work, cut):
    target = work / "wdir"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(tiny_model_dir, target, ignore=shutil.ignore_patterns("checkpoint"))
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:cut] if isinstance(cut, int) else cut)
    result = outcome(load_model_dir, target)
    assert isinstance(result, EdgeKDError) and result.exit_code == 4


@FEW
@given(junk, st.sampled_from([".pt", ".pth", ".safetensors", ".bin"]))
def test_malformed_checkpoints(work, content, suffix):
    result = outcome(load_checkpoint_state, _write(work / f"ckpt{suffix}", content))
    assert isinstance(result, EdgeKDError) and result.exit_code == 4
