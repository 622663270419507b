"""Bad inputs through the real command line: the documented exit code, one ``error:`` line, nothing written.

:data:`CASES` is the table: each row names an input that a user (or a damaged disk) can hand to ``edgekd``,
the command run on it and the exit code it must give (3 invalid input, 4 missing/unreadable/malformed file).
Every case must also print exactly one line starting ``error:`` (no traceback, no pydantic dump, no advice
to unpickle) and leave nothing at ``--out``: validation happens before any training work.

The last tests check that no code path deserialises untrusted data unsafely: a scan of the package's source
for pickle / ``torch.load`` / unsafe YAML / ``eval`` / ``exec``, and the one opt-in path (``trust_pickle``).
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import ArtifactError
from edgekd.specs import ModelSpec
from edgekd.students import apply_structure, build_model
from edgekd.teachers import load_checkpoint_state

from .conftest import SYNTH

runner = CliRunner()
TRAIN = ["train", "--model", "small:tinycnn", "--epochs", "1", "--batch-size", "16", "--quiet", "--out", "{out}"]
DISTILL = ["distill", "--student", "small:tinycnn", "--data", SYNTH, "--epochs", "1", "--quiet", "--out", "{out}"]


def _png(path: Path, value: int = 0, size=(8, 8), mode: str = "L", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = value if mode in ("L", "I;16", "1", "P") else (value,) * len(mode)
    Image.new(mode, (size[1], size[0]), fill).save(path, **save)
    return path


def _folder(root: Path, classes=("a", "b"), n: int = 4, **kw) -> Path:
    for c in classes:
        for i in range(n):
            _png(root / c / f"{i}.png", 20 * i, **kw)
    return root


def _csv(root: Path, text: str | bytes, name: str = "labels.csv") -> None:
    for i in range(4):
        _png(root / "img" / f"{i}.png", 30 * i)
    data = text.encode() if isinstance(text, str) else text
    (root / name).write_bytes(data)


GOOD_ROWS = "path,label\nimg/0.png,a\nimg/1.png,b\nimg/2.png,a\nimg/3.png,b\n"


def _npz(path: Path, **over) -> None:
    arrays = {f"{s}_images": np.zeros((4, 8, 8), np.uint8) for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.array([[0], [1], [0], [1]]) for s in ("train", "val", "test")}
    arrays |= over
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def _model_dir(src: str, dst: Path, card=None, weights=None) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint"))
    if card is not None:
        path = dst / "edgekd.json"
        path.write_bytes(card(json.loads(path.read_text())) if callable(card) else card)
    if weights is not None:
        path = dst / "model.safetensors"
        path.write_bytes(weights(path.read_bytes()))


def _dump(update):
    def apply(card: dict) -> bytes:
        update(card)
        return json.dumps(card).encode()

    return apply


def _inconsistent_structure(src: str, dst: Path) -> None:
    """A pruned structure whose weights match it, but whose conv and batch-norm widths disagree."""
    _model_dir(src, dst)
    card = json.loads((dst / "edgekd.json").read_text())
    model = build_model(ModelSpec.model_validate(card["spec"]))
    structure = {"features.0.0": {"out_channels": 8}}  # the conv shrinks, its batch norm does not
    apply_structure(model, structure)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dst / "model.safetensors"))
    card["structure"] = structure
    (dst / "edgekd.json").write_text(json.dumps(card))


def _bundle(dst: Path, manifest: bytes) -> None:
    dst.mkdir(parents=True)
    (dst / "manifest.json").write_bytes(manifest)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir) -> Path:
    """Every bad input of :data:`CASES`, under one folder."""
    d = tmp_path_factory.mktemp("bad")
    # CSV tables (images in d/<case>/img)
    _csv(d / "csv_binary", b"path,label\x00\nimg/0.png,a\n")
    _csv(d / "csv_latin1", "path,label\nimg/0.png,caf\xe9\nimg/1.png,b\n".encode("latin-1"))
    _csv(d / "csv_one_column", "path\nimg/0.png\nimg/1.png\n")
    _csv(d / "csv_ragged", "img/0.png,a\nimg/1.png,b,train,extra\n")
    _csv(d / "csv_header_only", "path,label\n")
    _csv(d / "csv_escape", "path,label\n../csv_escape/img/0.png,a\n../../etc/passwd,b\n")
    _csv(d / "csv_absolute", "path,label\n/etc/hostname,a\nimg/1.png,b\n")
    _csv(d / "csv_missing_image", GOOD_ROWS + "img/9.png,a\n")
    _csv(d / "csv_folder_row", "path,label\nimg,a\nimg/1.png,b\n")
    _csv(d / "csv_case_labels", "path,label\nimg/0.png,Normal\nimg/1.png,normal\nimg/2.png,b\n")
    _csv(d / "csv_fraction_labels", "path,label\nimg/0.png,0.25\nimg/1.png,0.5\nimg/2.png,1\n")
    _csv(d / "csv_bad_split", "img/0.png,a,training\nimg/1.png,b,test\n")
    _csv(d / "csv_quote", 'path,label\nimg/0.png,"a\nimg/1.png,b\n')
    _csv(d / "csv_single_class", "path,label\nimg/0.png,a\nimg/1.png,a\nimg/2.png,a\n")
    _csv(d / "csv_ok", GOOD_ROWS + GOOD_ROWS.split("\n", 1)[1] * 2)
    # image folders
    _folder(d / "if_sizes")
    _png(d / "if_sizes" / "b" / "big.png", 9, size=(12, 10))
    _folder(d / "if_16bit")
    _png(d / "if_16bit" / "b" / "deep.png", 4000, mode="I;16")
    _folder(d / "if_cmyk")
    _png(d / "if_cmyk" / "a" / "print.jpg", 9, mode="CMYK")
    _folder(d / "if_stack")
    frames = [Image.new("L", (8, 8), v) for v in (0, 90, 180)]
    frames[0].save(d / "if_stack" / "a" / "volume.tif", save_all=True, append_images=frames[1:])
    _folder(d / "if_broken")
    (d / "if_broken" / "a" / "cut.png").write_bytes((d / "if_broken" / "a" / "0.png").read_bytes()[:40])
    _folder(d / "if_single", classes=("only",))
    _folder(d / "if_ok")
    # MedMNIST files
    (d / "mm_text.npz").write_text("train_images = [[0, 1], [1, 0]]\n")
    np.save(d / "mm_plain.npy", np.zeros((4, 8, 8), np.uint8))
    _npz(d / "mm_ok.npz")
    (d / "mm_truncated.npz").write_bytes((d / "mm_ok.npz").read_bytes()[:300])
    _npz(d / "mm_object.npz", train_labels=np.array([[0], [1], [0], "x"], dtype=object))
    _npz(d / "mm_missing_key.npz", val_labels=None)
    _npz(d / "mm_empty_val.npz", val_images=np.zeros((0, 8, 8), np.uint8), val_labels=np.zeros((0, 1), np.int64))
    _npz(d / "mm_float.npz", train_images=np.zeros((4, 8, 8), np.float32))
    _npz(d / "mm_negative.npz", test_labels=np.array([[0], [-1], [0], [1]]))
    zeros = np.zeros((4, 1), np.int64)
    _npz(d / "mm_single.npz", train_labels=zeros, val_labels=zeros, test_labels=zeros)
    _npz(d / "mm_gap.npz", train_labels=np.array([[0], [3], [0], [3]]))
    _npz(d / "mm_three.npz", train_labels=np.array([[0], [1], [2], [1]]))
    with zipfile.ZipFile(d / "mm_not_array.npz", "w") as z:
        for s in ("train", "val", "test"):
            z.writestr(f"{s}_images", b"raw bytes, not an .npy member")
            z.writestr(f"{s}_labels.npy", b"\x93NUMPY garbage")
    # model directories
    _model_dir(tiny_model_dir, d / "md_bad_json", card=b'{"spec": ')
    _model_dir(tiny_model_dir, d / "md_wrong_type", card=_dump(lambda c: c["spec"].update(num_classes="two")))
    _model_dir(tiny_model_dir, d / "md_kwargs", card=_dump(lambda c: c["spec"]["kwargs"].update(widths="wide")))
    _model_dir(tiny_model_dir, d / "md_unknown_kw", card=_dump(lambda c: c["spec"]["kwargs"].update(depth=3)))
    _model_dir(tiny_model_dir, d / "md_unknown_model", card=_dump(lambda c: c["spec"].update(name="small:nope")))
    _model_dir(
        tiny_model_dir,
        d / "md_wide",
        card=_dump(lambda c: c.update(structure={"features.0.0": {"out_channels": 4096}})),
    )
    _model_dir(
        tiny_model_dir,
        d / "md_bad_attr",
        card=_dump(lambda c: c.update(structure={"features.0.0": {"kernel_size": 1}})),
    )
    _inconsistent_structure(tiny_model_dir, d / "md_inconsistent")
    _model_dir(tiny_model_dir, d / "md_truncated", weights=lambda b: b[: len(b) // 2])
    _model_dir(tiny_model_dir, d / "md_newer", card=_dump(lambda c: c.update(format_version=99)))
    _model_dir(tiny_model_dir, d / "md_size", card=_dump(lambda c: c["preprocess"].update(input_size=[0, 16])))
    _model_dir(tiny_model_dir, d / "md_mean", card=_dump(lambda c: c["preprocess"].update(mean=[0.1, 0.2])))
    # baselines, bundles, ONNX files, checkpoints, configs
    (d / "bench_garbage.json").write_bytes(b"\x89PNG\r\n\x1a\n")
    (d / "bench_types.json").write_text(json.dumps({"environment": {"cpu": 3}, "settings": {}, "results": "x"}))
    (d / "bench_deep.json").write_text("[" * 100_000)
    _bundle(d / "bundle_bad_json", b"{ nope")
    _bundle(
        d / "bundle_types", json.dumps({"name": "m", "target": "ort", "task": "regression", "label_names": 3}).encode()
    )
    _bundle(d / "bundle_version", json.dumps({"schema_version": "one"}).encode())
    squeeze = build_model(ModelSpec(name="tv:squeezenet1_1", num_classes=2, in_chans=1))
    save_file({k: v.contiguous() for k, v in squeeze.state_dict().items()}, str(d / "squeezenet.safetensors"))
    (d / "garbage.onnx").write_bytes(b"\x08\x07" + bytes(range(256)))
    (d / "garbage.pt").write_bytes(b"\x80\x02}q\x00(X\x01")
    (d / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    (d / "python_tag.yaml").write_text("epochs: !!python/object/apply:os.system ['touch pwned']\n")
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00e\x00p")
    (d / "bad_value.yaml").write_text("lr: fast\n")
    return d


# (case, command with {d} = the inputs folder and {out} = a fresh output path, expected exit code)
CASES: list[tuple[str, list[str], int]] = [
    # ---- csv:
    ("csv binary (NUL bytes)", [*TRAIN, "--data", "csv:{d}/csv_binary/labels.csv"], 4),
    ("csv not UTF-8 (latin-1)", [*TRAIN, "--data", "csv:{d}/csv_latin1/labels.csv"], 4),
    ("csv missing the label column", [*TRAIN, "--data", "csv:{d}/csv_one_column/labels.csv"], 4),
    ("csv ragged row", [*TRAIN, "--data", "csv:{d}/csv_ragged/labels.csv"], 4),
    ("csv header only, no rows", [*TRAIN, "--data", "csv:{d}/csv_header_only/labels.csv"], 4),
    ("csv path escaping its folder (..)", [*TRAIN, "--data", "csv:{d}/csv_escape/labels.csv"], 4),
    ("csv absolute path", [*TRAIN, "--data", "csv:{d}/csv_absolute/labels.csv"], 4),
    ("csv row naming a missing image", [*TRAIN, "--data", "csv:{d}/csv_missing_image/labels.csv"], 4),
    ("csv row naming a folder", [*TRAIN, "--data", "csv:{d}/csv_folder_row/labels.csv"], 4),
    ("csv labels differing only in case", [*TRAIN, "--data", "csv:{d}/csv_case_labels/labels.csv"], 4),
    ("csv fractional labels (a measurement)", [*TRAIN, "--data", "csv:{d}/csv_fraction_labels/labels.csv"], 4),
    ("csv unknown split value", [*TRAIN, "--data", "csv:{d}/csv_bad_split/labels.csv"], 4),
    ("csv unterminated quote", [*TRAIN, "--data", "csv:{d}/csv_quote/labels.csv"], 4),
    ("csv single class", [*TRAIN, "--data", "csv:{d}/csv_single_class/labels.csv"], 3),
    ("csv val=0 leaves val empty", [*TRAIN, "--data", "csv:{d}/csv_ok/labels.csv,val=0"], 3),
    # ---- imagefolder:
    ("imagefolder sizes differ, no size=", [*TRAIN, "--data", "imagefolder:{d}/if_sizes"], 3),
    ("imagefolder 16-bit PNG without depth=16", [*TRAIN, "--data", "imagefolder:{d}/if_16bit"], 4),
    ("imagefolder depth=16 on 8-bit images", [*TRAIN, "--data", "imagefolder:{d}/if_ok,depth=16"], 4),
    ("imagefolder CMYK JPEG", [*TRAIN, "--data", "imagefolder:{d}/if_cmyk"], 4),
    ("imagefolder multi-frame TIFF stack", [*TRAIN, "--data", "imagefolder:{d}/if_stack"], 4),
    ("imagefolder truncated PNG", [*TRAIN, "--data", "imagefolder:{d}/if_broken"], 4),
    ("imagefolder single class", [*TRAIN, "--data", "imagefolder:{d}/if_single"], 3),
    ("imagefolder size=0", [*TRAIN, "--data", "imagefolder:{d}/if_ok,size=0"], 3),
    ("imagefolder size=100000", [*TRAIN, "--data", "imagefolder:{d}/if_ok,size=100000"], 3),
    ("imagefolder channels=2", [*TRAIN, "--data", "imagefolder:{d}/if_ok,channels=2"], 3),
    # ---- medmnist:
    ("medmnist text file, not a zip", [*TRAIN, "--data", "medmnist:{d}/mm_text.npz"], 4),
    ("medmnist .npy instead of .npz", [*TRAIN, "--data", "medmnist:{d}/mm_plain.npy"], 4),
    ("medmnist truncated .npz", [*TRAIN, "--data", "medmnist:{d}/mm_truncated.npz"], 4),
    ("medmnist object array (pickle)", [*TRAIN, "--data", "medmnist:{d}/mm_object.npz"], 4),
    ("medmnist members that are not arrays", [*TRAIN, "--data", "medmnist:{d}/mm_not_array.npz"], 4),
    ("medmnist missing key", [*TRAIN, "--data", "medmnist:{d}/mm_missing_key.npz"], 4),
    ("medmnist empty val split", [*TRAIN, "--data", "medmnist:{d}/mm_empty_val.npz"], 4),
    ("medmnist float images", [*TRAIN, "--data", "medmnist:{d}/mm_float.npz"], 4),
    ("medmnist negative labels", [*TRAIN, "--data", "medmnist:{d}/mm_negative.npz"], 4),
    ("medmnist single class", [*TRAIN, "--data", "medmnist:{d}/mm_single.npz"], 3),
    ("medmnist classes without training samples", [*TRAIN, "--data", "medmnist:{d}/mm_gap.npz"], 3),
    ("medmnist label outside labels=", [*TRAIN, "--data", "medmnist:{d}/mm_three.npz,labels=a;b"], 3),
    # ---- synthetic: and input sizes
    ("synthetic classes=1", [*TRAIN, "--data", "synthetic:classes=1"], 3),
    ("synthetic n too large", [*TRAIN, "--data", "synthetic:n=1000000000"], 3),
    (
        "data too small for the model (16 px squeezenet)",
        ["train", "--model", "tv:squeezenet1_1", "--data", SYNTH, "--epochs", "1", "--quiet", "--out", "{out}"],
        3,
    ),
    (
        "--input-size below the model's floor",
        ["train", "--model", "tv:squeezenet1_1", "--data", SYNTH, "--input-size", "8", "--quiet", "--out", "{out}"],
        3,
    ),
    ("--input-size 5000", [*TRAIN, "--data", SYNTH, "--input-size", "5000"], 3),
    # ---- model directories (edgekd.json, model.safetensors)
    ("edgekd.json not JSON", ["eval", "{d}/md_bad_json"], 4),
    ("edgekd.json wrong type", ["eval", "{d}/md_wrong_type"], 4),
    ("edgekd.json kwargs the builder rejects", ["eval", "{d}/md_kwargs"], 4),
    ("edgekd.json unknown builder kwarg", ["inspect", "{d}/md_unknown_kw"], 4),
    ("edgekd.json unknown model name", ["eval", "{d}/md_unknown_model"], 4),
    ("edgekd.json structure wider than the architecture", ["eval", "{d}/md_wide"], 4),
    ("edgekd.json structure sets a non-width", ["eval", "{d}/md_bad_attr"], 4),
    ("edgekd.json structure inconsistent (weights match)", ["eval", "{d}/md_inconsistent"], 4),
    ("edgekd.json newer format", ["eval", "{d}/md_newer"], 4),
    ("edgekd.json zero input size", ["eval", "{d}/md_size"], 4),
    ("edgekd.json mean for the wrong channels", ["eval", "{d}/md_mean"], 4),
    ("model.safetensors truncated", ["eval", "{d}/md_truncated"], 4),
    ("fine-tune from a damaged model dir", [*TRAIN[:2], "{d}/md_kwargs", *TRAIN[3:], "--data", SYNTH], 4),
    ("distill from a damaged teacher dir", [*DISTILL, "--teacher", "{d}/md_truncated"], 4),
    ("distill loss with a bad value", [*DISTILL, "--teacher", "{d}/md_ok", "--loss", "kd:1,T=hot"], 3),
    ("distill unknown loss", [*DISTILL, "--teacher", "{d}/md_ok", "--loss", "kdd:1"], 3),
    # ---- other readers: baselines, manifests, ONNX, checkpoints, configs
    ("bench baseline not JSON", ["bench", "compare", "{d}/bench_garbage.json", "{d}/bench_garbage.json"], 4),
    ("bench baseline wrong types", ["bench", "compare", "{d}/bench_types.json", "{d}/bench_types.json"], 4),
    ("bench baseline nested too deep", ["bench", "compare", "{d}/bench_deep.json", "{d}/bench_deep.json"], 4),
    ("bundle manifest not JSON", ["verify", "{d}/bundle_bad_json"], 4),
    ("bundle manifest wrong types", ["verify", "{d}/bundle_types"], 4),
    ("bundle manifest schema_version a string", ["verify", "{d}/bundle_version"], 4),
    ("ONNX file of garbage", ["lint-onnx", "{d}/garbage.onnx"], 4),
    (
        "import a garbage .pt",
        ["import", "{d}/garbage.pt", "--model", "small:tinycnn", "--data", SYNTH, "--out", "{out}"],
        4,
    ),
    (
        "import a garbage .safetensors",
        ["import", "{d}/garbage.safetensors", "--model", "small:tinycnn", "--data", SYNTH, "--out", "{out}"],
        4,
    ),
    (
        "import with --input-size below the model's floor",
        [
            "import",
            "{d}/squeezenet.safetensors",
            "--model",
            "tv:squeezenet1_1",
            "--data",
            SYNTH,
            "--input-size",
            "8",
            "--out",
            "{out}",
        ],
        3,
    ),
    ("config with a python tag", [*TRAIN, "--data", SYNTH, "--config", "{d}/python_tag.yaml"], 3),
    ("config not UTF-8", [*TRAIN, "--data", SYNTH, "--config", "{d}/binary.yaml"], 4),
    ("config with a bad value", [*TRAIN, "--data", SYNTH, "--config", "{d}/bad_value.yaml"], 3),
]


@pytest.fixture(scope="module")
def ok_teacher(inputs, tiny_model_dir) -> Path:
    if not (inputs / "md_ok").exists():
        shutil.copytree(tiny_model_dir, inputs / "md_ok", ignore=shutil.ignore_patterns("checkpoint"))
    return inputs / "md_ok"


@pytest.mark.parametrize("case, command, code", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exit_code_one_line_nothing_written(inputs, ok_teacher, tmp_path, monkeypatch, case, command, code):
    monkeypatch.chdir(tmp_path)  # a config's python tag would write "pwned" here
    out = tmp_path / "out"
    args = [a.replace("{d}", str(inputs)).replace("{out}", str(out)) for a in command]
    r = runner.invoke(app, args, env={"EDGEKD_DEBUG": ""})
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == code, f"{case}: exit {r.exit_code}, expected {code}\n{r.output}"
    assert len(lines) == 1 and lines[0].startswith("error:"), f"{case}: not one error line:\n{r.output}"
    assert "Traceback" not in r.output and "internal error" not in r.output
    assert not any(leak in r.output for leak in ("allow_pickle", "pickle.load", "pydantic.dev", "validation error"))
    assert not out.exists(), f"{case}: wrote {sorted(p.name for p in out.iterdir())}"
    assert not (tmp_path / "pwned").exists()


def test_table_is_large_enough():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_good_inputs_of_the_table_still_load(inputs):
    """The fixtures next to the bad ones are fine: the failures above come from what each case breaks."""
    from edgekd.data import load_data

    assert len(load_data(f"csv:{inputs}/csv_ok/labels.csv").train) > 0
    assert load_data(f"imagefolder:{inputs}/if_ok").image_size == (8, 8)
    assert load_data(f"imagefolder:{inputs}/if_sizes,size=8").image_size == (8, 8)
    assert load_data(f"medmnist:{inputs}/mm_ok.npz").num_classes == 2
    assert load_data(f"medmnist:{inputs}/mm_three.npz,labels=a;b;c").num_classes == 3


# ------------------------------------------------------------------------------------------- decoding rules


def test_16bit_images_scale_by_the_high_byte_with_depth_16(tmp_path):
    from edgekd.data import load_data

    root = _folder(tmp_path, n=3, mode="I;16")
    _png(root / "a" / "ramp.png", 0, mode="I;16")
    Image.fromarray(np.full((8, 8), 51_400, np.uint16)).save(root / "a" / "ramp.png")  # 51400 // 256 = 200
    bundle = load_data(f"imagefolder:{root},depth=16")
    index = [p.name for p in bundle.train.paths + bundle.val.paths + bundle.test.paths].index("ramp.png")
    ds = [bundle.train, bundle.val, bundle.test]
    flat = [(d, i) for d in ds for i in range(len(d))]
    image, _ = flat[index][0][flat[index][1]]
    assert bundle.channels == 1 and int(image.max()) == 200 and int(image.min()) == 200


@pytest.mark.parametrize(
    "mode, channels, expected",
    [
        ("1", 1, 255),
        ("LA", 1, 77),
        ("P", 3, None),
        ("RGBA", 3, (77, 77, 77)),
        ("RGB", 1, 77),
    ],
)
def test_modes_convert_by_the_documented_rules(tmp_path, mode, channels, expected):
    from edgekd.data import load_data

    root = tmp_path / "d"
    im = Image.new("RGB", (8, 8), (77, 77, 77)).convert(mode) if mode != "1" else Image.new("1", (8, 8), 1)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            im.save(root / c / f"{i}.png")
    bundle = load_data(f"imagefolder:{root},channels={channels}")
    image, _ = bundle.train[0]
    assert image.shape == (channels, 8, 8)
    if expected is not None:
        want = torch.tensor(expected if isinstance(expected, tuple) else (expected,), dtype=torch.uint8)
        assert torch.equal(image[:, 0, 0], want)


def test_csv_labels_keep_string_order_and_refuse_number_twins(tmp_path):
    """String order (10 before 9) is what earlier models recorded: class indices never move under a model."""
    from edgekd.data import load_data

    rows = ["path,label"] + [f"img/{i % 4}.png,{label}" for i, label in enumerate(["2", "10", "9", "1"] * 3)]
    _csv(tmp_path, "\n".join(rows) + "\n")
    assert load_data(f"csv:{tmp_path}/labels.csv,val=0.25,test=0.25").label_names == ["1", "10", "2", "9"]
    (tmp_path / "twins.csv").write_text("path,label\nimg/0.png,1\nimg/1.png,1.0\nimg/2.png,2\n")
    with pytest.raises(ArtifactError, match="same number"):
        load_data(f"csv:{tmp_path}/twins.csv")


def test_input_size_check_names_a_size_that_runs():
    from edgekd.errors import InvalidInputError
    from edgekd.students import check_input_size

    model = build_model(ModelSpec(name="tv:squeezenet1_1", num_classes=2, in_chans=1))
    with pytest.raises(InvalidInputError, match="cannot run at input size 16x16") as info:
        check_input_size(model, "tv:squeezenet1_1", (16, 16), 1)
    size = int(info.value.hint.rsplit(" ", 1)[-1])
    check_input_size(model, "tv:squeezenet1_1", (size, size), 1)  # the hint's size runs
    assert model.training  # the probe restores the mode


# ------------------------------------------------------------------------------------------- no unsafe loading

PACKAGE = Path(__file__).resolve().parents[1] / "edgekd"
OPT_IN = PACKAGE / "teachers" / "_checkpoint.py"  # the only file allowed to unpickle, behind trust_pickle
UNSAFE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("cPickle", "load"),
    ("cPickle", "loads"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
    ("marshal", "load"),
    ("marshal", "loads"),
    ("shelve", "open"),
    ("yaml", "load"),
    ("yaml", "load_all"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("yaml", "unsafe_load_all"),
    ("torch", "load"),
    ("jsonpickle", "decode"),
}


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "<expr>")  # model.to(dev).eval() is not eval()
    return tuple(reversed(parts))


def _unsafe_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in {"pickle", "dill", "marshal", "shelve", "joblib"}:
            found += [f"{path.name}:{node.lineno} from {node.module} import {a.name}" for a in node.names]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name[-2:] in UNSAFE_CALLS or name in {("eval",), ("exec",), ("__import__",)}:
            found.append(f"{path.name}:{node.lineno} {'.'.join(name)}(")
        for kw in node.keywords:
            value = kw.value.value if isinstance(kw.value, ast.Constant) else "expr"
            if kw.arg == "allow_pickle" and value is not False:
                found.append(f"{path.name}:{node.lineno} allow_pickle={value}")
            if kw.arg == "weights_only" and value is not True and path != OPT_IN:
                found.append(f"{path.name}:{node.lineno} weights_only={value}")
            if kw.arg == "trust_pickle" and value is True:
                found.append(f"{path.name}:{node.lineno} trust_pickle=True")
            if kw.arg == "Loader" and name[-1] in ("load", "load_all"):
                found.append(f"{path.name}:{node.lineno} yaml Loader=")
    return found


def test_no_unsafe_deserialisation_in_the_package():
    found = {str(p.relative_to(PACKAGE)): _unsafe_uses(p) for p in PACKAGE.rglob("*.py")}
    opt_in = found.pop(str(OPT_IN.relative_to(PACKAGE)))
    assert {k: v for k, v in found.items() if v} == {}
    assert opt_in and all("torch.load(" in use for use in opt_in), opt_in  # only torch.load, nothing else


def test_opt_in_torch_load_is_gated_by_trust_pickle():
    """``torch.load`` in the opt-in file passes ``weights_only=not trust_pickle`` explicitly, whatever torch's
    default is, and ``trust_pickle`` defaults to False everywhere it is a parameter."""
    tree = ast.parse(OPT_IN.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _dotted(n.func) == ("torch", "load")]
    assert len(calls) == 1
    (kw,) = [k for k in calls[0].keywords if k.arg == "weights_only"]
    assert ast.unparse(kw.value) == "not trust_pickle"
    for p in PACKAGE.rglob("*.py"):
        for fn in (
            n for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ):
            args = fn.args.args + fn.args.kwonlyargs
            defaults = [None] * (len(fn.args.args) - len(fn.args.defaults)) + fn.args.defaults + fn.args.kw_defaults
            for a, d in zip(args, defaults):
                if a.arg == "trust_pickle":  # required, or False by default
                    assert d is None or (isinstance(d, ast.Constant) and d.value is False), f"{p.name}:{fn.name}"


class _Payload:
    """Unpickling this runs ``Path(marker).touch()``: what a hostile checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_hostile_checkpoint_runs_no_code_without_trust_pickle(tmp_path):
    marker = tmp_path / "ran"
    for name, writer in (
        ("full.pt", lambda f: torch.save({"state_dict": _Payload(str(marker))}, f)),
        ("plain.pkl.pt", lambda f: pickle.dump(_Payload(str(marker)), f, protocol=2)),
    ):
        path = tmp_path / name
        with open(path, "wb") as fh:
            writer(fh)
        with pytest.raises(ArtifactError) as info:
            load_checkpoint_state(path)
        assert info.value.exit_code == 4 and "trust-pickle" in (info.value.hint or "")
        assert not marker.exists(), f"{name}: unpickling ran code without trust_pickle"


def test_medmnist_never_unpickles(tmp_path):
    """An .npz whose labels are a pickled object: refused without numpy unpickling (which would run code)."""
    marker = tmp_path / "ran"
    _npz(tmp_path / "hostile.npz", train_labels=np.array([_Payload(str(marker))] * 4, dtype=object))
    from edgekd.data import load_data

    with pytest.raises(ArtifactError, match="object array") as info:
        load_data(f"medmnist:{tmp_path / 'hostile.npz'}")
    assert "allow_pickle" not in str(info.value) and not marker.exists()


def test_bytes_of_a_pickle_given_as_medmnist(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "x.npz").write_bytes(pickle.dumps(_Payload(str(marker))))
    from edgekd.data import load_data

    with pytest.raises(ArtifactError, match="not a .npz file") as info:
        load_data(f"medmnist:{tmp_path / 'x.npz'}")
    assert "pickle" not in str(info.value).replace(str(tmp_path), "").lower() and not marker.exists()
