"""``edgekd dicom-node``: a DICOM Storage SCP that answers every received image with DICOM results.

A modality or PACS sends images by C-STORE (pynetdicom). Each accepted instance is classified by the bundle
with the same machinery as ``edgekd predict`` (:func:`~edgekd.serve.predict`: the bundle's preprocessing, the
intended-use check, the out-of-distribution score, the operating threshold) and answered by the result writers
of the model's task (:mod:`._dicom_sr`: a Comprehensive SR for classification; :mod:`._dicom_seg`: a DICOM SEG of
the mask for segmentation, upsampled to the source image's size), which are sent to a destination
(``--send-to AE@HOST:PORT``, C-STORE SCU) or kept in the outbox.

Nothing accepted is lost. The state lives in one folder (``--outbox DIR``, private to its user, locked by one
node at a time):

* ``incoming/``: every accepted instance, written atomically (temporary file, fsync, rename) *before* the
  C-STORE success status is sent;
* ``out/``: results, written atomically (without a destination they wait there for another process to collect
  them, and count against ``max_pending``); the instance is removed from ``incoming/`` only once all its results
  are there, and a result is sent only once its instance is gone, so a crash at any point either re-does a job
  (its result UIDs are derived from the source instance and the model: the same objects again) or resumes its
  delivery;
* ``failed/``: results the destination refused for good (a failure status other than out of resources), and
  instances whose processing raised; each with one log line.

Delivery is retried with exponential back-off (``retry_s`` doubling up to ``retry_max_s``); a restart resumes
both queues. A result is delivered once, except when the node dies between the destination's success status and
the local delete: then the same SOP instance is sent again, which a PACS stores once.

Refusals, each answered with its DIMSE status and logged in one line (no patient data, no UIDs: a job is named
by a random id):

======================================================  ==============================================
a SOP class that is no image the node reads (SR, SEG...)  ``0x0122`` Refused: SOP Class not supported
the outbox full (``max_pending``) or the disk nearly so   ``0xA700`` Refused: Out of resources
an instance larger than ``max_instance_mb``               ``0xA700`` Refused: Out of resources
a data set of another SOP class, or with no image         ``0xA900`` Error: Data Set does not match SOP Class
a data set that cannot be parsed, truncated pixel data    ``0xC000`` Error: Cannot understand
a transfer syntax without an installed decoder            presentation context rejected (reason 4)
more than ``max_associations`` at once                    association rejected (transient, local limit)
an association addressed to another AE title              association rejected (called AE not recognised)
======================================================  ==============================================

ACSE, DIMSE and network timeouts end stalled associations. Images outside the model's intended use are accepted
(they are valid images) and answered with an SR that says they were not analysed and why, unless
``allow_out_of_scope`` (then analysed and flagged).

Example:
    >>> model = load_model("bundles/chest-int8")
    >>> with DicomNode(model, NodeConfig(port=11112, outbox=Path("outbox"),
    ...                send_to=Destination.parse("PACS@10.0.0.5:104"))) as node:
    ...     node.wait()                                          # until stop() or a signal
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import re
import shutil
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd._io import atomic_write_bytes
from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.serve._dicom_seg import segmentation_seg  # noqa: F401 (registers the ``seg`` result writer)
from edgekd.serve._dicom_sr import RESULT_WRITERS, Outcome, ResultUIDs, require_highdicom, uuid_uid, writers_for
from edgekd.serve._model import LoadedModel
from edgekd.serve._predict import Skipped, predict

__all__ = [
    "Destination",
    "NodeConfig",
    "DicomNode",
    "IMAGE_SOP_CLASSES",
    "STATUS",
    "check_ae_title",
    "iter_results",
    "require_pynetdicom",
    "serve_dicom",
]

log = logging.getLogger("edgekd.dicom")

# DIMSE statuses of a Storage SCP (PS3.4 B.2.3, PS3.7 C).
STATUS = {"success": 0x0000, "sop-class": 0x0122, "resources": 0xA700, "mismatch": 0xA900, "understand": 0xC000}
# Image storage SOP classes whose pixels the dicom: reader decodes to one 2D image (multi-frame ones are
# answered "not analysed" unless a single frame); any other storage SOP class is refused with 0x0122.
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.2": "MG",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "MG",
    "1.2.840.10008.5.1.4.1.1.1.3": "IO",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "IO",
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.6.1": "US",
    "1.2.840.10008.5.1.4.1.1.7": "SC",
    "1.2.840.10008.5.1.4.1.1.7.2": "SC",
    "1.2.840.10008.5.1.4.1.1.7.3": "SC",
    "1.2.840.10008.5.1.4.1.1.7.4": "SC",
    "1.2.840.10008.5.1.4.1.1.12.1": "XA",
    "1.2.840.10008.5.1.4.1.1.12.2": "RF",
    "1.2.840.10008.5.1.4.1.1.20": "NM",
    "1.2.840.10008.5.1.4.1.1.128": "PT",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "XC",
    "1.2.840.10008.5.1.4.1.1.481.1": "RTIMAGE",
}
_AE_TITLE = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")  # 1-16, no \\
_DIRS = ("incoming", "out", "failed", "sent")


def require_pynetdicom() -> Any:
    """The pynetdicom package, or a :class:`DependencyError` (exit 5) naming the extra."""
    try:
        import pynetdicom
    except ImportError as e:
        raise DependencyError("the DICOM node needs pynetdicom", "pip install 'edgekd[dicom]'") from e
    return pynetdicom


def check_ae_title(title: str, what: str = "AE title") -> str:
    if not _AE_TITLE.match(title or ""):
        raise InvalidInputError(f"{what} {title!r} is not valid", "1-16 printable ASCII characters, no backslash")
    return title


@dataclass(frozen=True)
class Destination:
    """Where results are sent: an AE title, host and port (``AE@HOST:PORT``)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        ae, at, rest = text.partition("@")
        host, colon, port = rest.rpartition(":")
        if not at or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInputError(f"--send-to {text!r} is not AE@HOST:PORT", "e.g. --send-to PACS@10.0.0.5:104")
        return cls(check_ae_title(ae, "destination AE title"), host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    """Settings of a DICOM node (the defaults of ``edgekd dicom-node``).

    Attributes:
        host, port: where to listen (port 0: a free one, see :attr:`DicomNode.port`).
        ae_title: the node's AE title; associations called by another title are rejected.
        outbox: the state folder (see the module docstring).
        send_to: the destination of results; None keeps them in ``outbox/out``.
        max_associations: simultaneous associations; more are rejected (transient).
        acse_timeout_s, dimse_timeout_s, network_timeout_s: pynetdicom's timeouts, also for delivery.
        max_pending: instances waiting in ``incoming`` plus results waiting in ``out``; beyond, 0xA700.
        min_free_mb: free disk space kept; below, 0xA700.
        max_instance_mb: the largest instance accepted.
        batch: instances per model call.
        retry_s, retry_max_s: first and largest delivery back-off.
        allow_out_of_scope: analyse (and flag) images outside the intended use instead of refusing them.
        keep_sent: keep delivered results in ``outbox/sent`` (else they are deleted).
        copy_patient_identity: results carry the source's Patient Name, Patient ID and Accession Number (for a
            PACS that files results by patient); by default they are empty and the study is referenced by its UID.
    """

    host: str = "127.0.0.1"
    port: int = 11112
    ae_title: str = "EDGEKD"
    outbox: Path = Path("dicom-outbox")
    send_to: Destination | None = None
    max_associations: int = 8
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    max_pending: int = 1000
    min_free_mb: float = 100.0
    max_instance_mb: float = 512.0
    batch: int = 16
    retry_s: float = 1.0
    retry_max_s: float = 300.0
    allow_out_of_scope: bool = False
    keep_sent: bool = False
    copy_patient_identity: bool = False

    def check(self) -> NodeConfig:
        check_ae_title(self.ae_title)
        if not 0 <= self.port < 65536:
            raise InvalidInputError(f"--port {self.port} is not a TCP port", "use 0..65535 (0: a free one)")
        for name in ("max_associations", "max_pending", "batch"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in (
            "acse_timeout_s",
            "dimse_timeout_s",
            "network_timeout_s",
            "retry_s",
            "retry_max_s",
            "max_instance_mb",
        ):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        return self


def _transfer_syntaxes() -> list[str]:
    """Uncompressed syntaxes, and every compressed one whose pixel decoder is installed."""
    import pydicom.pixels
    from pydicom import uid

    out = [
        uid.ExplicitVRLittleEndian,
        uid.ImplicitVRLittleEndian,
        uid.DeflatedExplicitVRLittleEndian,
        uid.ExplicitVRBigEndian,
    ]
    for ts in (
        uid.JPEGBaseline8Bit,
        uid.JPEGExtended12Bit,
        uid.JPEGLossless,
        uid.JPEGLosslessSV1,
        uid.JPEGLSLossless,
        uid.JPEGLSNearLossless,
        uid.JPEG2000Lossless,
        uid.JPEG2000,
        uid.RLELossless,
        uid.HTJ2KLossless,
        uid.HTJ2KLosslessRPCL,
        uid.HTJ2K,
    ):
        with contextlib.suppress(NotImplementedError):
            if pydicom.pixels.get_decoder(ts).is_available:
                out.append(ts)
    return out


def _job_id() -> str:
    """Arrival-ordered and unique: nanoseconds, then random hex (never derived from the instance)."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


@dataclass
class _Counters:
    accepted: int = 0
    refused: int = 0
    processed: int = 0
    delivered: int = 0
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def to_json(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("accepted", "refused", "processed", "delivered", "failed")}


class DicomNode:
    """The Storage SCP, its processing worker and its delivery worker (see the module docstring).

    ``start()`` binds and returns; ``stop()`` stops accepting, lets the workers finish their current step and
    releases the outbox. Usable as a context manager.
    """

    def __init__(self, model: LoadedModel, config: NodeConfig) -> None:
        require_pynetdicom()
        require_highdicom()
        self.model = model
        self.config = config.check()
        self.writers = writers_for(model.info.task)
        self.root = Path(config.outbox)
        self.dirs = {name: self.root / name for name in _DIRS}
        self.counters = _Counters()
        self._stop = threading.Event()
        self._work = threading.Event()
        self._deliver = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._lock_file: Any = None

    # -- life cycle -----------------------------------------------------------------------------------------

    def __enter__(self) -> DicomNode:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def start(self) -> DicomNode:
        self._open_outbox()
        try:
            self._server = self._make_ae().start_server(
                (self.config.host, self.config.port), block=False, evt_handlers=self._handlers()
            )
        except OSError as e:
            self._release_outbox()
            raise InvalidInputError(
                f"cannot listen on {self.config.host}:{self.config.port} ({e.strerror or type(e).__name__})",
                "choose another --port",
            ) from None
        for name, target in (("process", self._process_loop), ("deliver", self._deliver_loop)):
            t = threading.Thread(target=target, name=f"edgekd-dicom-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        pending = self._count("incoming"), self._count("out")
        if any(pending):
            log.info("resuming: %d instance(s) to process, %d result(s) to deliver", *pending)
        self._work.set()
        self._deliver.set()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        self._work.set()
        self._deliver.set()
        for t in self._threads:
            t.join(timeout=max(30.0, self.config.dimse_timeout_s))
        self._threads = []
        self._release_outbox()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` (True) or ``timeout`` seconds (False)."""
        return self._stop.wait(timeout)

    def idle(self) -> bool:
        """Nothing left to process, nor (with a destination) to deliver."""
        return self._count("incoming") == 0 and (self.config.send_to is None or self._count("out") == 0)

    def _open_outbox(self) -> None:
        for d in (self.root, *self.dirs.values()):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)  # received instances hold patient data
        self._lock_file = open(self.root / ".lock", "a+")  # noqa: SIM115 (held for the node's life)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            raise ArtifactError(
                f"outbox {self.root} is in use by another DICOM node", "stop it, or give this node its own --outbox"
            ) from None
        for d in self.dirs.values():  # temporaries of a killed writer: this node holds the lock, none is live
            for tmp in d.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def _release_outbox(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _files(self, name: str) -> list[Path]:
        return sorted(p for p in self.dirs[name].glob("*.dcm") if not p.name.startswith("."))

    def _count(self, name: str) -> int:
        return len(self._files(name))

    # -- the SCP ---------------------------------------------------------------------------------------------

    def _make_ae(self) -> Any:
        pynetdicom = require_pynetdicom()
        from pynetdicom.sop_class import Verification

        c = self.config
        ae = pynetdicom.AE(ae_title=c.ae_title)
        ae.maximum_associations = c.max_associations
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = c.acse_timeout_s, c.dimse_timeout_s, c.network_timeout_s
        ae.require_called_aet = True
        ae.maximum_pdu_size = 1 << 20
        syntaxes = _transfer_syntaxes()
        ae.add_supported_context(Verification)
        for cx in pynetdicom.AllStoragePresentationContexts:  # others get 0x0122 rather than a missing context
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        return ae

    def _handlers(self) -> list[Any]:
        from pynetdicom import evt

        return [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
        ]

    @staticmethod
    def _peer(event: Any) -> str:
        req = event.assoc.requestor
        return f"AE {str(req.ae_title).strip()!r} ({req.address})"

    def _on_accepted(self, event: Any) -> None:
        rejected = event.assoc.rejected_contexts
        if rejected:
            names = sorted({str(getattr(cx.abstract_syntax, "name", cx.abstract_syntax)) for cx in rejected})
            log.warning(
                "refused from %s: %d presentation context(s) without a transfer syntax the node can decode (%s%s)",
                self._peer(event),
                len(rejected),
                ", ".join(names[:3]),
                ", ..." if len(names) > 3 else "",
            )

    def _on_rejected(self, event: Any) -> None:
        log.warning(
            "association from %s rejected (association limit %d or wrong called AE title)",
            self._peer(event),
            self.config.max_associations,
        )

    def _on_aborted(self, event: Any) -> None:
        log.warning("association with %s aborted (timeout or peer abort)", self._peer(event))

    def _refuse(self, event: Any, key: str, why: str) -> int:
        self.counters.add("refused")
        log.warning("refused from %s: 0x%04X %s", self._peer(event), STATUS[key], why)
        return STATUS[key]

    def _on_store(self, event: Any) -> int:
        """Check, spool atomically, then answer success (or the refusal status). Never raises."""
        try:
            return self._store(event)
        except Exception as e:  # a bug must still answer a status and leave one line, not a traceback of data
            return self._refuse(event, "understand", f"internal error ({type(e).__name__})")

    def _store(self, event: Any) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        if sop_class not in IMAGE_SOP_CLASSES:
            name = getattr(event.request.AffectedSOPClassUID, "name", "") or "unknown SOP class"
            return self._refuse(event, "sop-class", f"SOP Class not supported ({name}: no image to classify)")
        full = self._full()
        if full:
            return self._refuse(event, "resources", full)
        data = event.encoded_dataset(include_meta=True)
        if len(data) > self.config.max_instance_mb * 1e6:
            return self._refuse(
                event,
                "resources",
                f"instance of {len(data) / 1e6:.0f} MB is larger than {self.config.max_instance_mb:g} MB",
            )
        problem = _check_instance(data, sop_class)
        if problem is not None:
            return self._refuse(event, *problem)
        job = _job_id()
        try:
            atomic_write_bytes(self.dirs["incoming"] / f"{job}.dcm", data)
        except OSError as e:
            return self._refuse(event, "resources", f"cannot spool the instance ({e.strerror or type(e).__name__})")
        self.counters.add("accepted")
        log.info(
            "accepted job %s from %s (%s image, %s)",
            job[-12:],
            self._peer(event),
            IMAGE_SOP_CLASSES[sop_class],
            f"{len(data) / 1e6:.1f} MB" if len(data) >= 1e6 else f"{len(data) / 1e3:.0f} kB",
        )
        self._work.set()
        return STATUS["success"]

    def _full(self) -> str | None:
        pending = self._count("incoming") + self._count("out")
        if pending >= self.config.max_pending:
            return f"outbox full ({pending} instance(s) and result(s) pending, limit {self.config.max_pending})"
        free = shutil.disk_usage(self.root).free / 1e6
        if free < self.config.min_free_mb:
            return f"disk nearly full ({free:.0f} MB free, {self.config.min_free_mb:g} MB kept)"
        return None

    # -- processing ------------------------------------------------------------------------------------------

    def _process_loop(self) -> None:
        while not self._stop.is_set():
            jobs = self._files("incoming")[: self.config.batch]
            if not jobs:
                self._work.wait(1.0)
                self._work.clear()
                continue
            try:
                self._process(jobs)
            except Exception as e:  # the batch: retry one by one so that one bad instance cannot stall the rest
                log.warning("batch of %d failed (%s); retrying one by one", len(jobs), type(e).__name__)
                for job in jobs:
                    try:
                        self._process([job])
                    except Exception as e1:
                        self._fail(job, f"processing raised {type(e1).__name__}")

    def _fail(self, path: Path, why: str) -> None:
        self.counters.add("failed")
        if path.exists():
            os.replace(path, self.dirs["failed"] / path.name)
        log.error("job %s: %s; kept in %s", path.stem[-12:], why, self.dirs["failed"])

    def _process(self, jobs: list[Path]) -> None:
        """Classify a batch with the predict machinery, write every result, then release the instances."""
        res = predict(
            self.model,
            [str(p) for p in jobs],
            batch=len(jobs),
            progress=False,
            allow_out_of_scope=self.config.allow_out_of_scope,
        )
        preds = {p.source: p for p in res.predictions}
        skipped = {s.source: s for s in res.skipped}
        for job in jobs:
            key = str(job)
            outcome = (
                Outcome(prediction=preds[key])
                if key in preds
                else Outcome(refused=skipped.get(key, Skipped(key, "no result (internal error)")))
            )
            self._write_results(job, outcome)
            job.unlink()
            self.counters.add("processed")
            what = outcome.prediction.label if outcome.prediction else f"not analysed ({outcome.refused.kind})"
            log.info("job %s: %s result(s) ready: %s", job.stem[-12:], "+".join(self.writers), what)
        self._deliver.set()

    def _write_results(self, job: Path, outcome: Outcome) -> None:
        from pydicom import dcmread

        with _quiet():
            source = dcmread(job, stop_before_pixels=True)
        info = self.model.info
        study = str(source.StudyInstanceUID)
        for name in self.writers:
            uids = ResultUIDs(
                # name-based on what the result depends on: a rebuild after a crash, or the same image sent again,
                # gives the same instance (a PACS keeps one), never a pile of duplicates
                sop_instance_uid=uuid_uid(
                    "result",
                    str(source.SOPInstanceUID),
                    info.sha256,
                    name,
                    f"{info.threshold}",
                    str(self.config.allow_out_of_scope),
                ),
                series_instance_uid=uuid_uid("series", info.sha256, name, study),
                instance_number=_instance_number(job.stem),
                patient_identity=self.config.copy_patient_identity,
            )
            for i, ds in enumerate(RESULT_WRITERS.get(name)(source, outcome, info, uids)):
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                atomic_write_bytes(self.dirs["out"] / f"{job.stem}.{name}.{i}.dcm", buf.getvalue())

    # -- delivery --------------------------------------------------------------------------------------------

    def _deliverable(self) -> list[Path]:
        """Results whose instance is fully processed (its spooled file is gone). ``out`` is listed before
        ``incoming``: a result written meanwhile is seen with its instance still there, and waits."""
        results = self._files("out")
        incoming = {p.stem for p in self._files("incoming")}
        return [p for p in results if p.name.split(".", 1)[0] not in incoming]

    def _deliver_loop(self) -> None:
        dest = self.config.send_to
        delay = self.config.retry_s
        while not self._stop.is_set():
            files = self._deliverable() if dest is not None else []
            if not files:
                self._deliver.wait(1.0)
                self._deliver.clear()
                continue
            sent, why = self._send(files)
            if why is None:
                delay = self.config.retry_s
                continue
            log.warning(
                "delivery to %s: %s; %d result(s) pending, retry in %.0f s", dest, why, self._count("out"), delay
            )
            self._stop.wait(delay)
            delay = min(delay * 2, self.config.retry_max_s)

    def _send(self, files: list[Path]) -> tuple[int, str | None]:
        """Send ``files`` in one association; (number delivered, why it stopped or None)."""
        pynetdicom = require_pynetdicom()
        from pydicom import dcmread
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom.sop_class import ComprehensiveSRStorage, SegmentationStorage

        c, dest = self.config, self.config.send_to
        assert dest is not None
        ae = pynetdicom.AE(ae_title=c.ae_title)
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = c.acse_timeout_s, c.dimse_timeout_s, c.network_timeout_s
        for sop_class in (ComprehensiveSRStorage, SegmentationStorage):  # results: SRs, and SEGs of masks
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            return 0, "association not established (destination down, busy or refusing)"
        sent = 0
        try:
            for path in files:
                if self._stop.is_set():
                    return sent, None
                with _quiet():
                    status = assoc.send_c_store(dcmread(path))
                code = getattr(status, "Status", None)
                if code is None:
                    return sent, "no response (timeout or association aborted)"
                if code == 0 or 0xB000 <= code <= 0xBFFF:  # success, or a warning: stored
                    self._delivered(path)
                    sent += 1
                elif 0xA700 <= code <= 0xA7FF:
                    return sent, f"destination out of resources (0x{code:04X})"
                else:
                    self.counters.add("failed")
                    os.replace(path, self.dirs["failed"] / path.name)
                    log.error(
                        "delivery to %s refused result %s with 0x%04X; kept in %s",
                        dest,
                        path.name.split(".", 1)[0][-12:],
                        code,
                        self.dirs["failed"],
                    )
        finally:
            assoc.release()
        if sent:
            log.info("delivered %d result(s) to %s", sent, dest)
        return sent, None

    def _delivered(self, path: Path) -> None:
        if self.config.keep_sent:
            os.replace(path, self.dirs["sent"] / path.name)
        else:
            path.unlink()
        self.counters.add("delivered")


def _instance_number(job: str) -> int:
    """A positive Instance Number (IS, at most 2^31 - 1) in arrival order within a node's run."""
    return 1 + int(job.split("-", 1)[0]) // 1_000_000 % 2_000_000_000


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pydicom's warnings can quote tag values: silence them while reading received data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _native_length(ds: Any) -> int | None:
    """Bytes of uncompressed pixel data the header implies (None when it cannot say)."""
    try:
        bits = int(ds.BitsAllocated)
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    return (n * bits + 7) // 8


def _check_instance(data: bytes, sop_class: str) -> tuple[str, str] | None:
    """(status key, reason) when a received instance cannot be accepted, else None. Reads the whole data set
    (pydicom parses lazily), so a truncated or damaged encoding is found here, before success is answered."""
    from pydicom import dcmread

    try:
        with _quiet():
            ds = dcmread(io.BytesIO(data))
            for _ in ds.iterall():
                pass
            ts = ds.file_meta.TransferSyntaxUID
    except Exception as e:  # any parser error: the bytes are not a data set pydicom understands
        return "understand", f"the data set cannot be parsed ({type(e).__name__})"
    if str(ds.get("SOPClassUID", "")) != sop_class:
        return "mismatch", "the data set's SOP Class UID differs from the C-STORE's"
    missing = [
        k
        for k in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "Rows",
            "Columns",
            "PhotometricInterpretation",
            "PixelData",
        )
        if not ds.get(k)
    ]
    if missing:
        return "mismatch", f"no {missing[0]} (not an image of this SOP class)"
    if not ts.is_compressed:
        need = _native_length(ds)
        if need is None or len(ds.PixelData) < need:
            return "understand", "pixel data shorter than Rows x Columns x samples x bits (truncated)"
    return None


def iter_results(outbox: Path) -> Iterator[Path]:
    """The result files kept in an outbox (``out/``), in arrival order."""
    yield from sorted(p for p in (Path(outbox) / "out").glob("*.dcm") if not p.name.startswith("."))


def serve_dicom(model: LoadedModel, config: NodeConfig, *, listening: Any = None) -> dict[str, int]:
    """Run a :class:`DicomNode` until SIGINT or SIGTERM; returns its counters. ``listening(node)`` is called once
    it is bound (``node.port`` is the real port when ``config.port`` is 0)."""
    node = DicomNode(model, config).start()
    halt = threading.Event()
    previous = {s: signal.signal(s, lambda *_: halt.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if listening is not None:
            listening(node)
        while not halt.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        node.stop()
    return node.counters.to_json()
