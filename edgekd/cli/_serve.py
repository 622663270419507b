"""`edgekd predict` and `edgekd serve`: use a bundle where it is deployed."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgekd.cli._app import PANEL_DEPLOY, app
from edgekd.cli._options import JsonOpt, QuietOpt, console, emit_json
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.export import Precision
from edgekd.serve import (
    DISCLAIMER,
    ModelInfo,
    PredictResult,
    ServeConfig,
    load_models,
    predict,
    require_serve_deps,
    serve_models,
)

_IN, _OUT, _RUN, _MODELS, _NET, _LIMITS = "Input", "Output", "Run", "Models", "Network", "Batching and limits"
_SHOWN = 20  # predictions printed when no --out is given

PrecisionOpt = Annotated[
    Precision | None,
    typer.Option(
        help="Which ONNX file of the bundle (default: its first: INT8 in a quantized bundle).",
        rich_help_panel=_RUN,
        show_default=False,
    ),
]
ThreadsOpt = Annotated[
    int,
    typer.Option(help="Runtime threads (ORT, OpenVINO, ExecuTorch; 0: one per physical core).", rich_help_panel=_RUN),
]


class Runtime(str, Enum):
    ORT = "ort"
    OPENVINO = "openvino"
    EXECUTORCH = "executorch"


RuntimeOpt = Annotated[
    Runtime | None,
    typer.Option(
        help="What runs the bundle's file (default: the fastest `edgekd bench --record` stored, else ort).",
        rich_help_panel=_RUN,
        show_default=False,
    ),
]
NoVerifyOpt = Annotated[
    bool,
    typer.Option(
        "--no-verify", help="Skip the bundle's hash and parity check (a warning is printed).", rich_help_panel=_RUN
    ),
]
AllowScopeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-out-of-scope",
        help="Answer DICOM images outside the model's intended use (flagged) "
        "instead of refusing them. DICOM objects that are no image (SEG, SR, RT, waveforms...) are "
        "refused whatever this says.",
        rich_help_panel=_RUN,
    ),
]
_err = Console(stderr=True, highlight=False, soft_wrap=True)


def _model_line(info: ModelInfo) -> str:
    line = f"[bold]{info.name}[/]: {escape(info.source)} {info.file} ({info.precision}, sha256 {info.sha256[:12]})"
    if info.threshold is not None:
        line += f", threshold {info.threshold:g} ({escape(info.threshold_source)})"
    use = info.intended_use
    line += f"; intended use: {escape(use.describe()) if use is not None and not use.empty else 'not recorded'}"
    line += f"; out-of-distribution reference: {escape(info.ood_reference)}"
    line += f"; runtime: {info.runtime} ({escape(info.runtime_source)})"
    return line


def _warn_unverified(info: ModelInfo) -> None:
    if info.kind == "bundle" and not info.verified:
        _err.print(f"[yellow]warning:[/] {escape(info.source)}: hashes and parity NOT verified (--no-verify)")


def _render(res: PredictResult, quiet: bool) -> None:
    if not res.out and res.predictions:
        t = Table(
            title=f"{len(res.predictions)} prediction(s)"
            + (f", first {_SHOWN}" if len(res.predictions) > _SHOWN else "")
        )
        for col in ("path", "label", "probabilities", "decision", "ood score", "flags"):
            t.add_column(col, overflow="fold")
        for p in res.predictions[:_SHOWN]:
            probs = " ".join(f"{k}={v:.3f}" for k, v in p.probabilities.items())
            score = "" if p.ood_score is None else f"{p.ood_score:.2f}"
            t.add_row(
                escape(p.source),
                escape(p.label),
                escape(probs),
                escape(p.decision or ""),
                score,
                escape(", ".join(p.flags)),
            )
        console.print(t)
    for s in res.skipped:
        _err.print(f"[yellow]{'refused' if s.refused else 'skipped'}:[/] {escape(s.source)}: {escape(s.reason)}")
    for p in res.predictions:
        if p.intended_use == "out-of-scope":
            _err.print(f"[yellow]answered out of scope:[/] {escape(p.source)}: {escape(p.scope_reason)}")
    flagged = sum(1 for p in res.predictions if p.out_of_distribution)
    if flagged:
        _err.print(
            f"[yellow]{flagged} of {len(res.predictions)} prediction(s) are out of distribution[/] (unlike the "
            "validation images: do not rely on them)"
        )
    if res.out:
        console.print(f"{len(res.predictions)} prediction(s), {len(res.skipped)} skipped: [bold]{res.out}[/]")
    if not quiet:
        console.print(f"[dim]{DISCLAIMER}[/]")


@app.command("predict", rich_help_panel=PANEL_DEPLOY)
def predict_cmd(
    model: Annotated[Path, typer.Argument(help="Bundle (edgekd export / quantize) or model directory.")],
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Image files, folders (searched recursively) or globs.", show_default=False),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Also classify a split of a data spec (imagefolder:DIR, csv:F, ...).",
            rich_help_panel=_IN,
            show_default=False,
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split of --data: train, val or test.", rich_help_panel=_IN)] = "test",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the predictions: .csv or .json (.ndjson with --fhir).",
            rich_help_panel=_OUT,
            show_default=False,
        ),
    ] = None,
    masks: Annotated[
        Path | None,
        typer.Option(
            "--masks",
            help="Segmentation models: write each image's mask PNG (class indices) and overlay into this folder.",
            rich_help_panel=_OUT,
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out (and --masks).", rich_help_panel=_OUT)
    ] = False,
    fhir: Annotated[
        bool,
        typer.Option(
            "--fhir",
            help="HL7 FHIR DiagnosticReports: a Bundle (.json) or one per line (.ndjson).",
            rich_help_panel=_OUT,
        ),
    ] = False,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Images per model call.", rich_help_panel=_RUN)] = 32,
    precision: PrecisionOpt = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Operating threshold of a binary task (default: the bundle's, else 0.5).",
            rich_help_panel=_RUN,
            show_default=False,
        ),
    ] = None,
    threads: ThreadsOpt = 0,
    runtime: RuntimeOpt = None,
    no_verify: NoVerifyOpt = False,
    allow_out_of_scope: AllowScopeOpt = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Classify images with a bundle's own preprocessing: label, per-class probabilities and, for binary
    tasks, the decision at the bundle's operating threshold; each with its out-of-distribution score and flag.

    Unreadable images are listed with the reason and skipped; the command then exits 4 (the output file
    still holds every other prediction, and the skipped ones in its error column). DICOM inputs outside the
    model's intended use, and DICOM objects that are no image, are refused with the reason (exit 3 when
    nothing was unreadable); PNG/JPEG inputs to a model with an intended use are answered, marked not checkable.

    A segmentation model answers each image with a mask: --masks DIR writes its PNG of class indices at the
    image's size and a colour overlay; the CSV's p_CLASS columns then hold each class's fraction of the area.

    Example: edgekd predict bundles/student-int8 scans/ extra/*.png --out preds.csv
    """
    res = predict(
        model,
        inputs or [],
        masks=masks,
        data=data,
        split=split,
        batch=batch,
        out=out,
        fhir=fhir,
        overwrite=overwrite,
        precision=precision.value if precision else None,
        threshold=threshold,
        verify=not no_verify,
        threads=threads,
        progress=not quiet and json_out != "-",
        allow_out_of_scope=allow_out_of_scope,
        runtime=runtime.value if runtime else None,
    )
    _warn_unverified(res.model)
    if json_out != "-":
        console.print(_model_line(res.model))
        _render(res, quiet)
    emit_json(res.to_json(), json_out)
    total = len(res.predictions) + len(res.skipped)
    where = "each is listed above with its reason" + (f" and in {out}" if out else "")
    if res.unreadable:
        raise ArtifactError(
            f"{len(res.unreadable)} of {total} input(s) were skipped (unreadable or missing)"
            + (f", {len(res.refused)} refused" if res.refused else ""),
            where,
        )
    if res.refused:
        raise InvalidInputError(
            f"{len(res.refused)} of {total} input(s) were refused (outside the model's intended "
            "use, or not an image to classify)",
            where,
        )


@app.command(rich_help_panel=PANEL_DEPLOY)
def serve(
    bundles: Annotated[list[str], typer.Argument(help="Bundles to serve; NAME=BUNDLE serves one under NAME.")],
    model_name: Annotated[
        str | None,
        typer.Option(
            "--model-name",
            help="Name of the (single) bundle (default: its model name).",
            rich_help_panel=_MODELS,
            show_default=False,
        ),
    ] = None,
    precision: PrecisionOpt = None,
    threads: ThreadsOpt = 0,
    runtime: RuntimeOpt = None,
    no_verify: NoVerifyOpt = False,
    host: Annotated[
        str, typer.Option(help="Address to bind; any other than loopback needs --api-key.", rich_help_panel=_NET)
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: a free one, printed).", rich_help_panel=_NET)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="EDGEKD_API_KEY",
            show_default=False,
            rich_help_panel=_NET,
            help="Bearer token required on every route but health (>= 16 characters; prefer the "
            "EDGEKD_API_KEY variable: the command line is visible to other users).",
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(help="Rows per model call and per request (1: no micro-batching).", rich_help_panel=_LIMITS)
    ] = 32,
    max_delay_ms: Annotated[
        float, typer.Option(help="How long a request may wait for others to batch with.", rich_help_panel=_LIMITS)
    ] = 5.0,
    max_queue: Annotated[
        int, typer.Option(help="Waiting requests per model before 503 Service Unavailable.", rich_help_panel=_LIMITS)
    ] = 256,
    max_body_mb: Annotated[
        float,
        typer.Option(help="Largest request body, also after decompression (413 beyond).", rich_help_panel=_LIMITS),
    ] = 32.0,
    fhir: Annotated[
        bool, typer.Option("--fhir", help="The image endpoint answers FHIR DiagnosticReports.", rich_help_panel=_OUT)
    ] = False,
    allow_out_of_scope: AllowScopeOpt = False,
    drain_s: Annotated[
        float,
        typer.Option(
            help="On SIGTERM: seconds readiness reports 503 while requests are still answered, before the "
            "server stops (in-flight requests always finish).",
            rich_help_panel=_NET,
        ),
    ] = 5.0,
) -> None:
    """Serve bundles over the Open Inference Protocol v2 (KServe / Triton REST API) with micro-batching.

    Routes: /v2/health/live, /v2/health/ready, /v2, /v2/models/NAME, /v2/models/NAME/ready, POST /v2/models/NAME/infer
    (typed tensors), POST /v2/models/NAME/classify (a PNG or JPEG body; ?format=fhir), /metrics (Prometheus).
    Every bundle's hashes and parity are verified before it is served: a modified bundle exits 6.

    Example: edgekd serve bundles/student-int8 --model-name pneumonia --port 8000 --max-batch 32
    """
    require_serve_deps()
    config = ServeConfig(
        host=host,
        port=port,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        max_queue=max_queue,
        max_body_mb=max_body_mb,
        api_key=api_key or None,
        fhir=fhir,
        allow_out_of_scope=allow_out_of_scope,
        drain_s=drain_s,
    ).check()
    models = load_models(
        bundles,
        model_name=model_name,
        precision=precision.value if precision else None,
        verify=not no_verify,
        threads=threads,
        runtime=runtime.value if runtime else None,
    )
    for m in models.values():
        _warn_unverified(m.info)
        console.print(_model_line(m.info))

    def listening(url: str) -> None:
        auth = "API key required" if config.api_key else "no API key (loopback only)"
        console.print(
            f"listening on {url}/v2 (max batch {config.max_batch}, max delay {config.max_delay_ms:g} ms, "
            f"{auth}); Ctrl-C stops"
        )
        sys.stdout.flush()

    serve_models(models, config, log=listening)
