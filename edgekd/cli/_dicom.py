"""`edgekd dicom-node`: a DICOM Storage SCP that answers received images with DICOM results (SR, SEG)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgekd.cli._app import PANEL_DEPLOY, app
from edgekd.cli._options import JsonOpt, console, emit_json
from edgekd.cli._serve import AllowScopeOpt, NoVerifyOpt, PrecisionOpt, ThreadsOpt, _model_line, _warn_unverified
from edgekd.serve import Destination, DicomNode, NodeConfig, load_model, serve_dicom

_NET, _OUT, _LIMITS = "Network", "Results", "Limits and timeouts"


def _setup_logging() -> None:
    """One line per event on stderr, the node's own. pynetdicom's lines repeat them (its INFO and DEBUG also dump
    UIDs and AE titles): shown from WARNING with EDGEKD_DEBUG=1 only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    quiet = logging.WARNING if os.environ.get("EDGEKD_DEBUG") else logging.CRITICAL
    for name, level in (("edgekd.dicom", logging.INFO), ("pynetdicom", quiet)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


@app.command("dicom-node", rich_help_panel=PANEL_DEPLOY)
def dicom_node(
    bundle: Annotated[Path, typer.Argument(help="Bundle (edgekd export / quantize) or model directory.")],
    port: Annotated[int, typer.Option(help="TCP port (0: a free one, printed).", rich_help_panel=_NET)] = 11112,
    host: Annotated[str, typer.Option(help="Address to listen on.", rich_help_panel=_NET)] = "127.0.0.1",
    ae_title: Annotated[
        str, typer.Option("--ae-title", help="The node's AE title (called AE title of senders).", rich_help_panel=_NET)
    ] = "EDGEKD",
    send_to: Annotated[
        str | None,
        typer.Option(
            "--send-to",
            help="Send results by C-STORE to AE@HOST:PORT (retried with back-off); without it they stay in the outbox.",
            rich_help_panel=_OUT,
            show_default=False,
        ),
    ] = None,
    outbox: Annotated[
        Path,
        typer.Option(
            "--outbox",
            help="State folder: received instances, results, failures (a restart resumes it).",
            rich_help_panel=_OUT,
        ),
    ] = Path("dicom-outbox"),
    keep_sent: Annotated[
        bool, typer.Option("--keep-sent", help="Keep delivered results in OUTBOX/sent.", rich_help_panel=_OUT)
    ] = False,
    max_associations: Annotated[int, typer.Option(help="Simultaneous associations.", rich_help_panel=_LIMITS)] = 8,
    max_pending: Annotated[
        int, typer.Option(help="Instances + results waiting before 0xA700 Out of resources.", rich_help_panel=_LIMITS)
    ] = 1000,
    timeout: Annotated[
        float, typer.Option(help="ACSE, DIMSE and network timeout in seconds.", rich_help_panel=_LIMITS)
    ] = 60.0,
    batch: Annotated[int, typer.Option(help="Instances per model call.", rich_help_panel=_LIMITS)] = 16,
    precision: PrecisionOpt = None,
    threads: ThreadsOpt = 0,
    no_verify: NoVerifyOpt = False,
    allow_out_of_scope: AllowScopeOpt = False,
    copy_patient_identity: Annotated[
        bool,
        typer.Option(
            "--copy-patient-identity",
            help="Results carry the source's Patient Name, Patient ID and Accession Number (for a PACS that files "
            "results by patient); by default they are empty and the study is referenced by its UID.",
            rich_help_panel=_OUT,
        ),
    ] = False,
    json_out: JsonOpt = None,
) -> None:
    """Listen for DICOM images (C-STORE, and C-ECHO) and answer each with a Comprehensive SR in the same study:
    finding, probabilities, the decision at the bundle's operating threshold, out-of-distribution flag,
    intended-use check, the model as observer device and a decision-support disclaimer. A segmentation bundle
    answers with a DICOM SEG instead (BINARY, one segment per class, at the image's size, referencing it).

    Accepted instances are spooled before success is answered; results are written atomically and delivered with
    back-off; a restart resumes both. Refusals get their DIMSE status and one log line. Ctrl-C or SIGTERM stops.

    Example: edgekd dicom-node bundles/chest-int8 --port 11112 --ae-title EDGEKD --send-to PACS@10.0.0.5:104
    """
    config = NodeConfig(
        host=host,
        port=port,
        ae_title=ae_title,
        outbox=outbox,
        send_to=Destination.parse(send_to) if send_to else None,
        max_associations=max_associations,
        max_pending=max_pending,
        acse_timeout_s=min(timeout, 30.0),
        dimse_timeout_s=timeout,
        network_timeout_s=timeout,
        batch=batch,
        allow_out_of_scope=allow_out_of_scope,
        keep_sent=keep_sent,
        copy_patient_identity=copy_patient_identity,
    ).check()
    model = load_model(bundle, precision=precision.value if precision else None, verify=not no_verify, threads=threads)
    _warn_unverified(model.info)
    console.print(_model_line(model.info))
    _setup_logging()

    def listening(node: DicomNode) -> None:
        where = f"results to {config.send_to}" if config.send_to else f"results kept in {config.outbox}/out"
        console.print(
            f"DICOM node {escape(config.ae_title)} listening on {config.host}:{node.port} ({where}); Ctrl-C stops"
        )
        sys.stdout.flush()

    counters = serve_dicom(model, config, listening=listening)
    console.print("stopped: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    emit_json({"model": model.info.to_json(), **counters}, json_out)
