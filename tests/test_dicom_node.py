"""`edgekd dicom-node` (issue 27, without SEG): a Storage SCP answering with a Comprehensive SR.

Checked with independent clients: dcmtk's ``echoscu`` / ``storescu`` send, dcmtk's ``storescp`` receives the
results, dicom3tools' ``dciodvfy`` validates them (the tests that need them skip, naming the binary, where they
are absent). Inputs are real files from ``pydicom-data`` (chest CR, its JPEG 2000 twin, a CT, a SEG, an SR) and
small chest CRs made from the real one. The node runs as the real command (a subprocess, so that it can be
killed) or in-process (:class:`edgekd.serve._dicom_node.DicomNode`) where a setting is tested.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data import Task
from edgekd.errors import InvalidInputError
from edgekd.serve import load_model, predict
from edgekd.serve._dicom_node import STATUS, Destination, DicomNode, NodeConfig
from edgekd.serve._dicom_sr import writers_for

from .test_trust import pydicom_file, trusted_bundles

pytest.importorskip("pynetdicom", reason="the dicom extra is not installed (pip install 'edgekd[dicom]')")
pytest.importorskip("highdicom", reason="the dicom extra is not installed (pip install 'edgekd[dicom]')")

runner = CliRunner()
WAIT_S = 90.0  # generous: the machine is shared and the first model call warms ONNX Runtime


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: apt-get install dcmtk dicom3tools)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_cr(path: Path, *, step: int = 15) -> Path:
    """A chest CR made from pydicom-data's RG1_UNCI.dcm (same header, pixels subsampled, a new instance UID)."""
    ds = pydicom.dcmread(pydicom_file("RG1_UNCI.dcm"))
    px = ds.pixel_array[::step, ::step].astype(np.uint16)
    ds.Rows, ds.Columns = px.shape
    ds.PixelData = px.tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def wait_files(folder: Path, n: int, timeout: float = WAIT_S) -> list[Path]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if len(files) >= n:
            time.sleep(0.5)  # a late duplicate would show now
            return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        time.sleep(0.2)
    raise AssertionError(f"{folder}: {len(list(folder.iterdir()))} file(s) after {timeout:.0f} s, expected {n}")


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def content_items(ds) -> list:
    """Every content item of an SR, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out += content_items(item)
    return out


def texts(ds) -> list[str]:
    return [str(i.TextValue) for i in content_items(ds) if i.ValueType == "TEXT"]


def codes_of(ds) -> dict[str, list[str]]:
    """Concept name meaning -> coded value meanings."""
    out: dict[str, list[str]] = {}
    for i in content_items(ds):
        if i.ValueType == "CODE":
            out.setdefault(str(i.ConceptNameCodeSequence[0].CodeMeaning), []).append(
                str(i.ConceptCodeSequence[0].CodeMeaning)
            )
    return out


def numbers_of(ds) -> dict[str, float]:
    return {
        str(i.ConceptNameCodeSequence[0].CodeMeaning): float(i.MeasuredValueSequence[0].NumericValue)
        for i in content_items(ds)
        if i.ValueType == "NUM"
    }


def referenced_instances(ds) -> set[str]:
    return {
        str(sop.ReferencedSOPInstanceUID)
        for ev in ds.CurrentRequestedProcedureEvidenceSequence
        for series in ev.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


class Proc:
    """A subprocess of this test, its log file, and a clean stop."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = log
        self._f = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._f, text=True)

    def wait_line(self, needle: str, timeout: float = WAIT_S) -> str:
        result: list[str] = []

        def read() -> None:
            for line in self.p.stdout:
                if needle in line:
                    result.append(line)
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        if not result:
            self.stop()
            raise AssertionError(f"no {needle!r} within {timeout:.0f} s; log: {self.log.read_text()[-2000:]}")
        return result[0]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, kill: bool = False) -> None:
        if self.p.poll() is None:
            self.p.kill() if kill else self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        if self.p.stdout:
            self.p.stdout.close()
        self._f.close()


def start_storescp(folder: Path, port: int, procs: list[Proc]) -> Proc:
    folder.mkdir(parents=True, exist_ok=True)
    # +uf: unique file names, so that a result delivered twice shows as two files
    p = Proc(["storescp", "-aet", "DEST", "-od", str(folder), "+uf", "-dhl", str(port)], folder.parent / "storescp.log")
    procs.append(p)
    end = time.monotonic() + 20
    while time.monotonic() < end:  # listening once a connection is accepted
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return p
        time.sleep(0.1)
    raise AssertionError("storescp did not start")


def start_node(bundle: Path, outbox: Path, procs: list[Proc], *extra: str) -> tuple[Proc, int]:
    cmd = [
        sys.executable,
        "-c",
        "from edgekd.cli import main; main()",
        "dicom-node",
        str(bundle),
        "--port",
        "0",
        "--outbox",
        str(outbox),
        "--threads",
        "1",
        *extra,
    ]
    p = Proc(cmd, outbox.parent / f"{outbox.name}.log")
    procs.append(p)
    line = p.wait_line("listening on")
    return p, int(line.split("listening on 127.0.0.1:")[1].split()[0])


def storescu(port: int, *files: Path, opts: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["storescu", "-v", "-R", *opts, "-aec", "EDGEKD", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return trusted_bundles(tmp_path_factory)["fp32"]


@pytest.fixture(scope="module")
def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture(scope="module")
def node(bundle, tmp_path_factory, procs):
    """`edgekd dicom-node` sending to a storescp destination; yields (node port, results folder, node process)."""
    need("storescp", "storescu")
    root = tmp_path_factory.mktemp("node")
    dest_port = free_port()
    start_storescp(root / "received", dest_port, procs)
    proc, port = start_node(bundle, root / "outbox", procs, "--send-to", f"DEST@127.0.0.1:{dest_port}")
    return port, root / "received", proc


def received(folder: Path, n: int) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in wait_files(folder, n)]


def new_results(folder: Path, before: set[Path], n: int) -> list[pydicom.Dataset]:
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        fresh = sorted(set(folder.iterdir()) - before)
        if len(fresh) >= n:
            time.sleep(0.3)
            return [pydicom.dcmread(p) for p in sorted(set(folder.iterdir()) - before)]
        time.sleep(0.2)
    raise AssertionError(f"{len(set(folder.iterdir()) - before)} new result(s), expected {n}")


# -- verification and the round trip ------------------------------------------------------------------------------


def test_echoscu_verifies_and_a_wrong_called_ae_title_is_rejected(node):
    need("echoscu")
    port, _, proc = node
    ok = subprocess.run(
        ["echoscu", "-aec", "EDGEKD", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        ["echoscu", "-aec", "OTHER", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0 and "Called AE Title Not Recognized" in bad.stdout + bad.stderr


def test_a_chest_cr_is_answered_by_an_sr_in_its_study_that_dciodvfy_accepts(node, bundle):
    need("dciodvfy")
    port, folder, proc = node
    before = set(folder.iterdir())
    chest = pydicom_file("RG1_UNCI.dcm")
    t0 = time.perf_counter()
    r = storescu(port, chest)
    assert r.returncode == 0, r.stdout + r.stderr
    [sr] = new_results(folder, before, 1)
    round_trip = time.perf_counter() - t0
    src = pydicom.dcmread(chest, stop_before_pixels=True)
    assert sr.SOPClassUID.name == "Comprehensive SR Storage" and sr.Modality == "SR"
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.SOPInstanceUID.startswith("2.25.") and sr.SeriesInstanceUID.startswith("2.25.")
    assert referenced_instances(sr) == {src.SOPInstanceUID}
    assert not sr.PatientID and not sr.PatientName and not sr.PatientBirthDate and not sr.PatientSex
    assert "InstitutionName" not in sr and sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
    [path] = sorted(set(folder.iterdir()) - before)
    assert dciodvfy_errors(path) == []
    # the SR says what `edgekd predict` says of the same file
    [p] = predict(load_model(bundle), [str(chest)], progress=False).predictions
    nums, coded = numbers_of(sr), codes_of(sr)
    for label, prob in p.probabilities.items():
        assert nums[f"Probability of {label}"] == pytest.approx(prob, abs=1e-6)
    info = load_model(bundle).info
    assert nums[f"Operating threshold on P({info.labels[1]})"] == pytest.approx(info.threshold)
    assert coded[info.labels[1]] == ["Present" if p.decision == info.labels[1] else "Absent"]
    assert coded["Out of distribution"] == ["Yes" if p.out_of_distribution else "No"]
    assert coded["Intended use check"] == ["in scope"]
    assert nums["Out-of-distribution score"] == pytest.approx(p.ood_score, rel=1e-5)
    device = [i for i in content_items(sr) if i.ValueType == "UIDREF"]
    assert device and any("Decision support only" in t for t in texts(sr))
    print(f"round trip storescu -> node -> storescp: {round_trip:.2f} s")


def test_jpeg_2000_is_decoded_and_answered_as_predict_answers_it(node, model):
    port, folder, _ = node
    before = set(folder.iterdir())
    j2k = pydicom_file("RG1_J2KR.dcm")
    r = storescu(port, j2k, opts=("-xv",))  # propose JPEG 2000 lossless
    assert r.returncode == 0, r.stdout + r.stderr
    [sr] = new_results(folder, before, 1)
    assert referenced_instances(sr) == {pydicom.dcmread(j2k, stop_before_pixels=True).SOPInstanceUID}
    [p] = predict(model, [str(j2k)], progress=False).predictions
    nums = numbers_of(sr)
    for label, prob in p.probabilities.items():
        assert nums[f"Probability of {label}"] == pytest.approx(prob, abs=1e-6)
    assert codes_of(sr)["CAD Processing and Findings Summary"][0].startswith("All algorithms succeeded")


def test_a_ct_outside_the_intended_use_is_accepted_and_its_sr_says_not_analysed(node):
    need("dciodvfy")
    port, folder, proc = node
    before = set(folder.iterdir())
    ct = pydicom_file("CT_small.dcm")
    r = storescu(port, ct)
    assert r.returncode == 0, r.stdout + r.stderr
    [sr] = new_results(folder, before, 1)
    coded = codes_of(sr)
    assert coded["CAD Processing and Findings Summary"] == ["Not Attempted"]
    assert any("operational limits" in v.lower() for v in coded["Intended use check"])
    assert any("Not analysed (out-of-scope)" in t and "Modality CT" in t for t in texts(sr))
    assert not any(k.startswith("Probability") for k in numbers_of(sr))
    assert referenced_instances(sr) == {pydicom.dcmread(ct, stop_before_pixels=True).SOPInstanceUID}
    assert dciodvfy_errors(sorted(set(folder.iterdir()) - before)[0]) == []


@pytest.mark.parametrize("name", ["test-SR.dcm", "liver_1frame.dcm"])
def test_a_non_image_sop_class_is_refused_with_0122(node, name):
    port, _, proc = node
    r = storescu(port, pydicom_file(name))
    assert r.returncode != 0
    assert "Received Store Response (Refused: SOPClassNotSupported)" in r.stdout + r.stderr  # dcmtk's name of 0x0122
    assert "0x0122 SOP Class not supported" in proc.text()


def test_a_transfer_syntax_without_a_decoder_is_refused_at_negotiation(node):
    port, _, proc = node
    r = storescu(port, pydicom_file("RG1_UNCI.dcm"), opts=("-xm",))  # MPEG2 only: nothing decodes it here
    assert r.returncode != 0 and "No Acceptable Presentation Contexts" in r.stdout + r.stderr
    assert "without a transfer syntax the node can decode" in proc.text()


def _scu_store(port: int, ds, syntax=ExplicitVRLittleEndian) -> int:
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ds.SOPClassUID, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEKD")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _scu_send_file(port: int, path: Path, sop_class: str, monkeypatch) -> int:
    """C-STORE the file's encoded data set as it is on disk (pynetdicom's chunked send: no decode, no re-encode)."""
    from pynetdicom import AE, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEKD")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupt_instances_get_their_dimse_status(node, tmp_path, monkeypatch):
    port, _, proc = node
    path = small_cr(tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    truncated = ds.copy()
    truncated.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    assert _scu_store(port, truncated) == STATUS["understand"]
    no_pixels = ds.copy()
    del no_pixels.PixelData
    assert _scu_store(port, no_pixels) == STATUS["mismatch"]
    # bytes on the wire that no parser understands: a sequence of undefined length whose item holds junk
    data = path.read_bytes()
    end = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    junk = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00" + b"\x01" * 16
    (tmp_path / "bad.dcm").write_bytes(data[:end] + junk + data[end:])
    assert _scu_send_file(port, tmp_path / "bad.dcm", ds.SOPClassUID, monkeypatch) == STATUS["understand"]
    log = proc.text()
    assert "0xC000 pixel data shorter" in log and "0xA900 no PixelData" in log and "cannot be parsed" in log


def test_concurrent_associations_lose_nothing_and_deliver_each_result_once(node, tmp_path):
    port, folder, _ = node
    before = set(folder.iterdir())
    files = [[small_cr(tmp_path / f"a{a}" / f"{i}.dcm") for i in range(5)] for a in range(4)]
    clients = [
        subprocess.Popen(
            ["storescu", "-R", "-aec", "EDGEKD", "127.0.0.1", str(port), *map(str, fs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for fs in files
    ]
    outs = [c.communicate(timeout=120) for c in clients]
    assert all(c.returncode == 0 for c in clients), [o[0] for o in outs]
    results = new_results(folder, before, 20)
    sent = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for fs in files for f in fs}
    refs = [uid for sr in results for uid in referenced_instances(sr)]
    assert len(results) == 20 and sorted(refs) == sorted(sent)  # each source answered exactly once
    assert len({sr.SOPInstanceUID for sr in results}) == 20


def test_the_same_image_sent_twice_is_answered_by_the_same_sr_instance(node, tmp_path):
    port, folder, _ = node
    before = set(folder.iterdir())
    image = small_cr(tmp_path / "a.dcm")
    assert storescu(port, image).returncode == 0 and storescu(port, image).returncode == 0
    first, second = new_results(folder, before, 2)
    assert first.SOPInstanceUID == second.SOPInstanceUID  # a PACS keeps one


def test_logs_name_no_patient_and_no_uid(node):
    _, _, proc = node
    log = proc.text()
    src = pydicom.dcmread(pydicom_file("RG1_UNCI.dcm"), stop_before_pixels=True)
    assert "accepted job" in log
    for value in (str(src.PatientName), src.PatientID, src.StudyInstanceUID, src.SOPInstanceUID, "1.2.840.10008"):
        assert value not in log


# -- restart, limits, timeouts ------------------------------------------------------------------------------------


def test_killed_mid_study_a_restart_delivers_every_pending_result_once(bundle, tmp_path, procs):
    need("storescp", "storescu")
    dest_port = free_port()  # the destination is down while the study arrives
    outbox = tmp_path / "outbox"
    proc, port = start_node(bundle, outbox, procs, "--send-to", f"DEST@127.0.0.1:{dest_port}")
    study = [small_cr(tmp_path / "study" / f"{i}.dcm") for i in range(6)]
    r = storescu(port, *study)
    assert r.returncode == 0, r.stdout + r.stderr
    proc.stop(kill=True)  # SIGKILL: no clean shutdown
    pending = list((outbox / "incoming").glob("*.dcm")) + list((outbox / "out").glob("*.dcm"))
    assert len({p.name.split(".")[0] for p in pending}) == 6  # all accepted instances are on disk
    start_storescp(tmp_path / "received", dest_port, procs)
    proc2, _ = start_node(bundle, outbox, procs, "--send-to", f"DEST@127.0.0.1:{dest_port}")
    results = received(tmp_path / "received", 6)
    sent = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in study}
    assert len(results) == 6 and sorted(u for sr in results for u in referenced_instances(sr)) == sorted(sent)
    end = time.monotonic() + 20
    while list((outbox / "out").glob("*.dcm")) and time.monotonic() < end:
        time.sleep(0.2)
    assert not list((outbox / "out").glob("*.dcm")) and not list((outbox / "incoming").glob("*.dcm"))
    assert "resuming" in proc2.text()


@pytest.fixture(scope="module")
def model(bundle):
    return load_model(bundle)


def test_a_full_outbox_answers_out_of_resources(model, tmp_path):
    cfg = NodeConfig(port=0, outbox=tmp_path / "box", max_pending=1)  # no destination: results stay
    with DicomNode(model, cfg) as n:
        ds = pydicom.dcmread(small_cr(tmp_path / "a.dcm"))
        assert _scu_store(n.port, ds) == STATUS["success"]
        assert _scu_store(n.port, ds) == STATUS["resources"]
        end = time.monotonic() + WAIT_S
        while not n.idle() and time.monotonic() < end:
            time.sleep(0.1)
        assert n.counters.to_json()["accepted"] == 1 and n.counters.to_json()["refused"] == 1
    assert len(list((tmp_path / "box" / "out").glob("*.dcm"))) == 1


def test_the_association_limit_and_the_acse_timeout(model, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    cfg = NodeConfig(port=0, outbox=tmp_path / "box", max_associations=1, acse_timeout_s=1.0, network_timeout_s=2.0)
    with DicomNode(model, cfg) as n:
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held = ae.associate("127.0.0.1", n.port, ae_title="EDGEKD")
        assert held.is_established
        second = ae.associate("127.0.0.1", n.port, ae_title="EDGEKD")
        assert second.is_rejected and not second.is_established  # local limit exceeded
        held.release()
        with socket.create_connection(("127.0.0.1", n.port), timeout=15) as s:  # connect and say nothing
            t0 = time.monotonic()
            assert s.recv(1024) == b""  # the node closes it
            assert time.monotonic() - t0 < 12


def test_a_second_node_on_the_same_outbox_is_refused(model, tmp_path):
    with DicomNode(model, NodeConfig(port=0, outbox=tmp_path / "box")):
        with pytest.raises(Exception, match="in use by another DICOM node"):
            DicomNode(model, NodeConfig(port=0, outbox=tmp_path / "box")).start()


# -- configuration and the extension point -------------------------------------------------------------------------


def test_destination_and_settings_are_checked():
    assert str(Destination.parse("PACS@10.0.0.5:104")) == "PACS@10.0.0.5:104"
    for bad in ("PACS", "PACS@host", "@host:104", "PACS@host:0", "A" * 17 + "@h:104", "P\\X@h:1"):
        with pytest.raises(InvalidInputError):
            Destination.parse(bad)
    with pytest.raises(InvalidInputError):
        NodeConfig(max_pending=0).check()
    assert writers_for(Task.BINARY) == ("sr",) and writers_for("segmentation") == ("seg",)
    with pytest.raises(InvalidInputError, match="no result writer for detection"):
        writers_for("detection")


def test_cli_help_lists_the_command_and_bad_options_exit_3(bundle, tmp_path):
    r = runner.invoke(app, ["dicom-node", "--help"])
    assert r.exit_code == 0 and "--send-to" in r.output and "--outbox" in r.output and "Example" in r.output
    r = runner.invoke(app, ["dicom-node", str(bundle), "--send-to", "nowhere", "--outbox", str(tmp_path / "b")])
    assert r.exit_code == 3 and "AE@HOST:PORT" in r.output


def test_delivery_is_retried_with_back_off_until_the_destination_comes_up(model, tmp_path, caplog, procs):
    need("storescp")
    dest_port = free_port()
    cfg = NodeConfig(port=0, outbox=tmp_path / "box", send_to=Destination("DEST", "127.0.0.1", dest_port), retry_s=0.2)
    with caplog.at_level("INFO", logger="edgekd.dicom"), DicomNode(model, cfg) as n:
        ds = pydicom.dcmread(small_cr(tmp_path / "a.dcm"))
        assert _scu_store(n.port, ds) == STATUS["success"]
        end = time.monotonic() + WAIT_S
        while caplog.text.count("retry in") < 2 and time.monotonic() < end:  # at least two failed attempts
            time.sleep(0.1)
        assert "retry in 0 s" in caplog.text and "retry in 0.4" not in caplog.text  # one line per attempt, %.0f s
        start_storescp(tmp_path / "received", dest_port, procs)
        [sr] = received(tmp_path / "received", 1)
        assert referenced_instances(sr) == {ds.SOPInstanceUID}
    assert "delivered 1 result(s)" in caplog.text


def test_the_sr_copies_no_patient_data_beyond_the_study_reference(model):
    from edgekd.serve._dicom_sr import Outcome, ResultUIDs, classification_sr, uuid_uid
    from edgekd.serve._predict import Skipped

    src = pydicom.dcmread(pydicom_file("RG1_UNCI.dcm"), stop_before_pixels=True)
    src.PatientBirthDate, src.PatientSex, src.InstitutionName = "19700101", "F", "St Elsewhere"
    src.ReferringPhysicianName, src.OtherPatientIDs, src.PatientAddress = "Dr^Who", "X123", "1 Main St"
    refusal = Outcome(refused=Skipped("x", "outside the model's intended use: Modality CT", "out-of-scope"))
    [sr] = classification_sr(src, refusal, model.info, ResultUIDs(uuid_uid(), uuid_uid("s")))
    assert not sr.PatientBirthDate and not sr.PatientSex and not sr.ReferringPhysicianName
    for tag in ("InstitutionName", "OtherPatientIDs", "PatientAddress"):
        assert tag not in sr
    assert sr.StudyInstanceUID == src.StudyInstanceUID and not sr.PatientID and not sr.PatientName
    assert not sr.AccessionNumber
    text = str(sr)
    for value in ("19700101", "St Elsewhere", "Dr^Who", "X123", "1 Main St", str(src.PatientName), src.PatientID):
        assert value not in text
    # opt-in (--copy-patient-identity): a PACS that files results by patient gets the name and ID, nothing more
    uids = ResultUIDs(uuid_uid(), uuid_uid("s"), patient_identity=True)
    [sr] = classification_sr(src, refusal, model.info, uids)
    assert sr.PatientID == src.PatientID and sr.PatientName == src.PatientName
    assert not sr.PatientBirthDate and "OtherPatientIDs" not in sr and "X123" not in str(sr)


def test_a_busy_destination_is_retried_and_a_refusing_one_leaves_the_result_in_failed(model, tmp_path):
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage

    answers = [STATUS["resources"], STATUS["success"], STATUS["mismatch"]]  # busy, then stored; then refused
    stored = []

    def on_store(event):
        code = answers.pop(0) if answers else STATUS["success"]
        if code == STATUS["success"]:
            stored.append(event.dataset.SOPInstanceUID)
        return code

    dest = AE(ae_title="DEST")
    dest.add_supported_context(ComprehensiveSRStorage)
    server = dest.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        send_to = Destination("DEST", "127.0.0.1", server.server_address[1])
        cfg = NodeConfig(port=0, outbox=tmp_path / "box", send_to=send_to, retry_s=0.2)
        with DicomNode(model, cfg) as n:
            assert _scu_store(n.port, pydicom.dcmread(small_cr(tmp_path / "a.dcm"))) == STATUS["success"]
            end = time.monotonic() + WAIT_S
            while not stored and time.monotonic() < end:
                time.sleep(0.1)
            assert len(stored) == 1 and n.counters.delivered == 1  # the 0xA700 was retried
            assert _scu_store(n.port, pydicom.dcmread(small_cr(tmp_path / "b.dcm"))) == STATUS["success"]
            while not list((tmp_path / "box" / "failed").glob("*.dcm")) and time.monotonic() < end:
                time.sleep(0.1)
            assert len(list((tmp_path / "box" / "failed").glob("*.dcm"))) == 1 and n.counters.failed == 1
            assert n.idle() and len(stored) == 1
    finally:
        server.shutdown()
