"""Are out-of-scope images refused or flagged, and how often is an in-distribution image flagged? (issue 23)

A quick chest classifier is trained on the bundled PneumoniaMNIST (small:resnet8, ``--epochs`` 3, declared
``--intended-use 'modality=CR,DX body_part=CHEST'``: PneumoniaMNIST is PNG-like array data, so its intended use
cannot come from DICOM headers), then quantized (PTQ cpu-x86, the hand-off bundle of ``edgekd run``) and
exported (FP32 bundle), both with ``--target-sensitivity 0.95``. Each artifact (the INT8 and FP32 bundles and
the model directory) then runs ``edgekd predict`` (the library call) on:

* real DICOM files of the ``pydicom-data`` package (installed by pip; nothing is downloaded): chest CR (15-bit
  MONOCHROME1, uncompressed and JPEG 2000), a hand/wrist CR (BodyPartExamined EXTREMITY), CT, MR, ultrasound,
  a segmentation (SEG) and a structured report (SR). Once as a user would (out-of-scope inputs refused), once
  with ``allow_out_of_scope`` (answered, flagged) to show their out-of-distribution scores too;
* PneumoniaMNIST's test split (624 images): the false-flag rate (goal <= 2 %; about 0.5 % is expected: the
  reference's combined score is calibrated at its 99.5th percentile on the validation split, and the test split
  is a slightly different population).

The JSON (default ``benchmarks/results/ood_flags.json``) holds one row per file and artifact (what predict did,
label, probability, OOD score per space, flag), the false-flag rates, and the environment. Flags, not timings:
it can run on a busy machine.

    python benchmarks/ood_flags.py                  # ~2 min on 2 CPU cores
    python benchmarks/ood_flags.py --epochs 10 --work runs/bench/ood_flags10 --out runs/bench/ood_flags10.json

``--work`` keeps the trained model and bundles: a second run with the same folder reuses them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.data._dicom import dicom_attributes  # noqa: E402
from edgekd.serve import load_model, predict  # noqa: E402

FILES = {  # pydicom-data file -> what it is
    "RG1_UNCI.dcm": "CR chest PA, MONOCHROME1, uncompressed",
    "RG1_J2KR.dcm": "CR chest PA, MONOCHROME1, JPEG 2000 lossless",
    "RG3_UNCI.dcm": "CR extremity (hand/wrist), uncompressed",
    "RG3_J2KR.dcm": "CR extremity (hand/wrist), JPEG 2000 lossless",
    "CT_small.dcm": "CT, 128x128",
    "693_UNCI.dcm": "CT, 512x512",
    "MR_small_RLE.dcm": "MR, RLE",
    "MR2_UNCR.dcm": "MR, 1024x1024",
    "US1_UNCR.dcm": "US, RGB",
    "ExplVR_BigEnd.dcm": "US, RGB, big endian",
    "liver_1frame.dcm": "SEG (liver segmentation)",
    "reportsi.dcm": "SR (structured report)",
}
INTENDED = "modality=CR,DX body_part=CHEST"


def edgekd(*args: str) -> None:
    subprocess.run([sys.executable, "-c", "from edgekd.cli import main; main()", *args], check=True)


def build(work: Path, epochs: int) -> dict[str, Path]:
    out = {"model_dir": work / "model", "int8": work / "int8", "fp32": work / "bundle"}
    if not (out["model_dir"] / "edgekd.json").is_file():
        edgekd(
            "train",
            "--model",
            "small:resnet8",
            "--data",
            "pneumoniamnist",
            "--epochs",
            str(epochs),
            "--intended-use",
            INTENDED,
            "--out",
            str(out["model_dir"]),
            "--overwrite",
            "--quiet",
        )
    if not (out["int8"] / "manifest.json").is_file():
        edgekd(
            "quantize",
            str(out["model_dir"]),
            "--method",
            "ptq",
            "--target",
            "cpu-x86",
            "--target-sensitivity",
            "0.95",
            "--out",
            str(out["int8"]),
            "--overwrite",
            "--quiet",
        )
    if not (out["fp32"] / "manifest.json").is_file():
        edgekd(
            "export", str(out["model_dir"]), "--target-sensitivity", "0.95", "--out", str(out["fp32"]), "--overwrite"
        )
    return out


def _dicom_files() -> dict[str, Path]:
    try:
        from pydicom.data import get_testdata_file
    except ImportError:
        raise SystemExit("pydicom-data is not installed: pip install pydicom-data") from None
    found = {name: get_testdata_file(name, download=False) for name in FILES}
    return {name: Path(p) for name, p in found.items() if p}


def _rows(artifact: str, model, files: dict[str, Path], allow: bool) -> list[dict[str, Any]]:
    res = predict(model, [str(p) for p in files.values()], progress=False, allow_out_of_scope=allow)
    name_of = {str(p): n for n, p in files.items()}
    rows = []
    for p in res.predictions:
        rows.append(
            {
                "artifact": artifact,
                "allow_out_of_scope": allow,
                "file": name_of[p.source],
                "what": FILES[name_of[p.source]],
                "result": "answered",
                "label": p.label,
                "probability": round(max(p.probabilities.values()), 4),
                "decision": p.decision,
                "ood_score": p.ood_score,
                "ood_spaces": p.ood_spaces,
                "out_of_distribution": p.out_of_distribution,
                "intended_use": p.intended_use,
                "reason": p.scope_reason,
            }
        )
    for s in res.skipped:
        rows.append(
            {
                "artifact": artifact,
                "allow_out_of_scope": allow,
                "file": name_of[s.source],
                "what": FILES[name_of[s.source]],
                "result": f"refused ({s.kind})" if s.refused else "skipped",
                "reason": s.reason,
            }
        )
    return sorted(rows, key=lambda r: list(FILES).index(r["file"]))


def _false_flags(model) -> dict[str, Any]:
    res = predict(model, [], data="pneumoniamnist", split="test", progress=False)
    flags = np.array([bool(p.out_of_distribution) for p in res.predictions])
    by_space = {s: int(sum((p.ood_spaces or {}).get(s, 0) > 1 for p in res.predictions)) for s in ("features", "image")}
    return {
        "n": len(flags),
        "flagged": int(flags.sum()),
        "rate": round(float(flags.mean()), 4),
        "flagged_by_space": by_space,
    }


def _print(rows: list[dict[str, Any]], rates: dict[str, Any]) -> None:
    for r in rows:
        if r["result"] == "answered":
            spaces = ", ".join(f"{k} {v:.2f}" for k, v in (r["ood_spaces"] or {}).items() if v is not None)
            flag = "FLAGGED" if r["out_of_distribution"] else "not flagged"
            print(
                f"{r['artifact']:9} {r['file']:18} {r['what']:42} {r['label']} {r['probability']:.3f}; OOD "
                f"{r['ood_score']} ({spaces}) {flag}; {r['intended_use']}"
            )
        else:
            print(f"{r['artifact']:9} {r['file']:18} {r['what']:42} {r['result']}: {r['reason']}")
    for artifact, rate in rates.items():
        print(f"{artifact}: PneumoniaMNIST test {rate['flagged']} of {rate['n']} flagged ({rate['rate']:.1%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("runs/bench/ood_flags"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ood_flags.json"))
    args = ap.parse_args()
    artifacts = build(args.work, args.epochs)
    files = _dicom_files()
    headers = {n: {k: v for k, v in dicom_attributes(p).items() if k != "SOPClassUID"} for n, p in files.items()}
    rows, rates, loaded = [], {}, {}
    for name, path in artifacts.items():
        loaded[name] = load_model(path, threads=1)
        for allow in (False, True):
            rows += _rows(name, loaded[name], files, allow)
        rates[name] = _false_flags(loaded[name])
    _print([r for r in rows if r["allow_out_of_scope"]], rates)
    info = {
        n: {
            "threshold": m.info.threshold,
            "threshold_source": m.info.threshold_source,
            "intended_use": m.info.intended_use.describe() if m.info.intended_use else None,
            "ood_reference": m.info.ood_reference,
        }
        for n, m in loaded.items()
    }
    write_json(
        args.out,
        {
            "what": "issue 23: intended use and OOD flags on pydicom-data files; false-flag rate on "
            "PneumoniaMNIST test (benchmarks/ood_flags.py)",
            "epochs": args.epochs,
            "models": info,
            "dicom_headers": headers,
            "rows": rows,
            "false_flag_rate": rates,
            "goal_false_flag_rate": 0.02,
            "environment": environment(),
        },
    )


if __name__ == "__main__":
    main()
