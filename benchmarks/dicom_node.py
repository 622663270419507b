"""`edgekd dicom-node` timed with dcmtk: storescu -> node -> storescp round trips, and a concurrent load.

The real command (``edgekd dicom-node`` in a subprocess, 127.0.0.1 only, 1 ONNX Runtime thread) answers with an
SR that it sends to dcmtk's ``storescp`` (``+uf``: a result delivered twice would be two files). The bundle is
``--bundle`` or a stand-in built here (small:tinycnn trained for 2 epochs on synthetic 16 px images, declared for
chest CR/DX, FP32 ONNX bundle with its operating point and out-of-distribution reference): the timings are those of
the DICOM path (network, spooling, decoding a real chest CR, SR building, delivery), not of a big model.

1. **Round trip**: ``--round-trips`` times, storescu sends pydicom-data's full-size chest CR (RG1_UNCI.dcm,
   1955 x 1841, 7.2 MB; one more first, uncounted, as warm-up) and the clock stops when its SR is in storescp's folder.
2. **Load**: ``--instances`` chest CRs (RG1_UNCI's header and pixels subsampled by ``--step``, each with its own
   SOP Instance UID) sent by ``--associations`` concurrent storescu processes. Per instance: from storescu's
   ``Sending file`` line (timestamped here as it is printed) to the arrival of the SR that references it. Checks:
   none lost (every instance answered), each result delivered once (no SR twice, no source answered twice).

    python benchmarks/dicom_node.py                  # 5 round trips, 100 instances from 4 associations
    python benchmarks/dicom_node.py --out benchmarks/results/cpu-2026-12-03/dicom_node.json
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

DATA = "synthetic:classes=2,n=1200,size=16,channels=1,seed=5"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_bundle(root: Path) -> Path:
    from edgekd.distill import RunSettings, TrainConfig, train_model
    from edgekd.export import export_bundle

    cfg = TrainConfig(epochs=2, batch_size=64, lr=5e-3, warmup_epochs=0.2)
    settings = RunSettings(student="small:tinycnn", data=DATA, train=cfg, intended_use="modality=CR,DX body_part=CHEST")
    train_model(settings, root / "model", progress=False, overwrite=True)
    export_bundle(root / "model", root / "bundle", n_samples=16, target_sensitivity=0.9, overwrite=True)
    return root / "bundle"


def make_instances(folder: Path, n: int, step: int) -> dict[str, Path]:
    """``n`` chest CRs made from RG1_UNCI.dcm: SOP Instance UID -> file."""
    src = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm", download=False))
    px = src.pixel_array[::step, ::step].astype(np.uint16)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        ds = src.copy()
        ds.Rows, ds.Columns = px.shape
        ds.PixelData = px.tobytes()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[str(ds.SOPInstanceUID)] = path
    return out


class Watcher:
    """Records when each new file appears in a folder (polled every 5 ms)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.seen, self._stop = folder, {}, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            for p in self.folder.iterdir():
                self.seen.setdefault(p, now)
            time.sleep(0.005)

    def wait(self, n: int, timeout: float) -> None:
        end = time.perf_counter() + timeout
        while len(self.seen) < n and time.perf_counter() < end:
            time.sleep(0.01)
        time.sleep(1.0)  # a duplicate would arrive now

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def referenced(path: Path) -> list[str]:
    ds = pydicom.dcmread(path)
    return [
        str(s.ReferencedSOPInstanceUID)
        for e in ds.CurrentRequestedProcedureEvidenceSequence
        for r in e.ReferencedSeriesSequence
        for s in r.ReferencedSOPSequence
    ]


def storescu(port: int, files: list[Path], sent: dict[str, float]) -> subprocess.Popen:
    """Start storescu; a thread stamps each ``Sending file`` line into ``sent`` (file -> perf_counter)."""
    p = subprocess.Popen(
        ["storescu", "-v", "-R", "-aec", "EDGEKD", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )

    def read() -> None:
        for line in p.stdout:
            if "Sending file:" in line:
                sent[line.split("Sending file:", 1)[1].strip()] = time.perf_counter()

    threading.Thread(target=read, daemon=True).start()
    return p


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def round_trips(port: int, received: Path, n: int) -> list[float]:
    chest = Path(get_testdata_file("RG1_UNCI.dcm", download=False))
    times = []
    for i in range(n + 1):  # the first warms the node up (ONNX Runtime, imports) and is not counted
        before = set(received.iterdir())
        t0 = time.perf_counter()
        subprocess.run(
            ["storescu", "-R", "-aec", "EDGEKD", "127.0.0.1", str(port), str(chest)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        while len(set(received.iterdir()) - before) < 1:
            time.sleep(0.002)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def load(port: int, received: Path, work: Path, n: int, associations: int, step: int) -> dict:
    instances = make_instances(work / "load", n, step)
    files = list(instances.values())
    size_mb = files[0].stat().st_size / 1e6
    before = set(received.iterdir())
    watcher = Watcher(received)
    sent: dict[str, float] = {}
    t0 = time.perf_counter()
    clients = [storescu(port, files[a::associations], sent) for a in range(associations)]
    codes = [c.wait(timeout=600) for c in clients]
    watcher.wait(len(before) + n, timeout=600)
    wall = time.perf_counter() - t0
    watcher.stop()
    new = {p: t for p, t in watcher.seen.items() if p not in before}
    by_source: dict[str, list[float]] = {}
    for path, t in new.items():
        for uid in referenced(path):
            by_source.setdefault(uid, []).append(t)
    latencies = [
        min(by_source[uid]) - sent[str(path)]
        for uid, path in instances.items()
        if uid in by_source and str(path) in sent
    ]
    return {
        "instances": n,
        "associations": associations,
        "instance_mb": round(size_mb, 3),
        "rows_columns": list(pydicom.dcmread(files[0], stop_before_pixels=True)[k].value for k in ("Rows", "Columns")),
        "storescu_exit_codes": codes,
        "results_received": len(new),
        "lost": sum(1 for uid in instances if uid not in by_source),
        "delivered_more_than_once": sum(1 for ts in by_source.values() if len(ts) > 1),
        "foreign_results": sum(1 for uid in by_source if uid not in instances),
        "wall_s": round(wall, 3),
        "instances_per_s": round(n / wall, 2),
        "latency_s": {
            "p50": round(pct(latencies, 50), 4),
            "p99": round(pct(latencies, 99), 4),
            "max": round(max(latencies), 4) if latencies else None,
            "n": len(latencies),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="bundle to serve (default: a stand-in built here)")
    ap.add_argument("--round-trips", type=int, default=5)
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--associations", type=int, default=4)
    ap.add_argument("--step", type=int, default=4, help="pixel subsampling of the load instances")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dicom_node.json"))
    args = ap.parse_args()
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install dcmtk)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = args.bundle or build_bundle(work / "stand-in")
        received, dest_port = work / "received", free_port()
        received.mkdir()
        procs = [
            subprocess.Popen(
                ["storescp", "-aet", "DEST", "-od", str(received), "+uf", str(dest_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ]
        node_log = open(work / "node.log", "w")  # noqa: SIM115
        node = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from edgekd.cli import main; main()",
                "dicom-node",
                str(bundle),
                "--port",
                "0",
                "--outbox",
                str(work / "outbox"),
                "--threads",
                "1",
                "--send-to",
                f"DEST@127.0.0.1:{dest_port}",
            ],
            stdout=subprocess.PIPE,
            stderr=node_log,
            text=True,
        )
        procs.append(node)
        try:
            line = next(ln for ln in node.stdout if "listening on" in ln)
            port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
            trips = round_trips(port, received, args.round_trips)
            result = load(port, received, work, args.instances, args.associations, args.step)
        finally:
            for p in procs[::-1]:
                p.terminate()
                p.wait(30)
            node_log.close()
        log = (work / "node.log").read_text()
    payload = {
        "benchmark": "dicom_node",
        "bundle": str(args.bundle) if args.bundle else "stand-in: small:tinycnn, synthetic 16 px, FP32 ONNX",
        "round_trip_full_cr_s": {
            "n": len(trips),
            "median": round(statistics.median(trips), 4),
            "min": round(min(trips), 4),
            "max": round(max(trips), 4),
            "instance": "RG1_UNCI.dcm, 1955 x 1841, 7.2 MB",
        },
        "load": result,
        "node_log_lines": {
            "accepted": log.count("accepted job"),
            "refused": log.count("refused from"),
            "delivery_retries": log.count("retry in"),
        },
        "environment": environment(),
        "note": "2 shared cores (4 other engineers' jobs ran beside it); node, storescu and storescp on one machine",
    }
    write_json(args.out, payload)
    print(payload["round_trip_full_cr_s"], payload["load"])
    if result["lost"] or result["delivered_more_than_once"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
