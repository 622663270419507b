"""The "Compared with" markdown table of `peers.py`, generated from its JSON payload (also pasted in the README)."""

from __future__ import annotations

from typing import Any

__all__ = ["markdown_table"]

HEADER = ["| comparison | measure | edgekd | peer | edgekd vs peer |", "|---|---|---|---|---|"]


def _ms(s: dict[str, float], digits: int = 4) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s["n"] > 1 else f"{s['mean']:.{digits}f}"


def _pts(x: float) -> str:
    return f"{x:+.2f} pts"


def _kd_rows(kd: dict[str, Any], v: dict[str, Any]) -> list[str]:
    e, t, r = kd["summary"]["edgekd"], kd["summary"]["torchdistill"], kd["ratios"]
    n = e["auroc"]["n"]
    name = f"KD vs torchdistill {v['torchdistill']}"
    rows = [
        f"| {name} | test AUROC ({n} seed{'s' if n > 1 else ''}) | {_ms(e['auroc'])} | {_ms(t['auroc'])} "
        f"| {_pts(r['auroc_points'])} |",
        f"| | test ACC | {_ms(e['acc'])} | {_ms(t['acc'])} | {_pts(r['acc_points'])} |",
        f"| | training img/s, live teacher | {e['images_per_s']['mean']:.1f} | {t['images_per_s']['mean']:.1f} "
        f"| {r['images_per_s']:.2f}x |",
    ]
    if kd.get("edgekd_cached"):
        c = kd["edgekd_cached"]
        rows.append(
            f"| | img/s with the teacher-logit cache (epochs after the first) "
            f"| {c['images_per_s_after_first_epoch']:.1f} | cannot: no teacher-output cache "
            f"| {r['cached_vs_torchdistill_images_per_s']:.2f}x vs its live teacher |"
        )
    rows.append(f"| KD vs NNCF {v['nncf']} | distillation | yes | cannot: no KD API in NNCF 3.x | — |")
    return rows


def _fidelity_row(fid: dict[str, dict[str, float]] | None, peer: str) -> list[str]:
    """Agreement with FP32's predicted class and relative logit error (absent from JSON written before them)."""
    if not fid:
        return []
    e, p = fid["edgekd"], fid[peer]
    return [
        f"| | test images classed as by FP32 / relative logit error | {e['agreement_pct']:.1f} % / "
        f"{e['logit_rel_error']:.1e} | {p['agreement_pct']:.1f} % / {p['logit_rel_error']:.1e} "
        f"| {e['agreement_pct'] - p['agreement_pct']:+.1f} pts / {p['logit_rel_error'] / e['logit_rel_error']:.2f}x "
        "less error |"
    ]


def _ptq_rows(ptq: dict[str, Any], v: dict[str, Any]) -> list[str]:
    d, lat, sp = ptq["delta_points_vs_fp32"], ptq["latency"], ptq["edgekd_speedup_over"]
    rows = []
    for peer, label in (
        ("nncf", f"INT8 PTQ vs NNCF {v['nncf']} (`nncf.quantize`)"),
        ("onnxruntime", f"INT8 PTQ vs ORT {v['onnxruntime']} `quantize_static` defaults"),
    ):
        rows += [
            f"| {label} | test ACC / AUROC change vs FP32 ({ptq['arch']}) | {_pts(d['edgekd']['acc'])} / "
            f"{_pts(d['edgekd']['auroc'])} | {_pts(d[peer]['acc'])} / {_pts(d[peer]['auroc'])} "
            f"| ACC {_pts(d['edgekd']['acc'] - d[peer]['acc'])} / AUROC {_pts(d['edgekd']['auroc'] - d[peer]['auroc'])} |",
            *_fidelity_row(ptq.get("fidelity_vs_fp32"), peer),
            f"| | ORT CPU ms, batch 1 / 32 (FP32 {lat['fp32']['batch1_ms']:.3f} / {lat['fp32']['batch32_ms']:.2f}) "
            f"| {lat['edgekd']['batch1_ms']:.3f} / {lat['edgekd']['batch32_ms']:.2f} "
            f"| {lat[peer]['batch1_ms']:.3f} / {lat[peer]['batch32_ms']:.2f} "
            f"| {sp[peer]['batch1_speedup']:.2f}x / {sp[peer]['batch32_speedup']:.2f}x faster |",
        ]
    rows.append(f"| INT8 vs torchdistill {v['torchdistill']} | quantization | yes | cannot: no quantization | — |")
    return rows


def _sens_rows(s: dict[str, Any], v: dict[str, Any]) -> list[str]:
    b, d, lat, sp = s["budget"], s["delta_points_vs_fp32"], s["latency"], s["edgekd_speedup_over"]["nncf"]
    metric = b["metric"].upper() if b["metric"] in ("acc", "auroc") else b["metric"]
    label = f"mixed precision ({s['arch']}, budget {b['max_drop_points']} val {metric} pts) vs NNCF accuracy control"
    return [
        f"| {label} | layers kept in FP32 | {len(s['edgekd_fp32_nodes'])} | {len(s['nncf_fp32_nodes'])} | — |",
        f"| | test ACC / AUROC change vs FP32 | {_pts(d['edgekd']['acc'])} / {_pts(d['edgekd']['auroc'])} "
        f"| {_pts(d['nncf']['acc'])} / {_pts(d['nncf']['auroc'])} | ACC {_pts(d['edgekd']['acc'] - d['nncf']['acc'])} "
        f"/ AUROC {_pts(d['edgekd']['auroc'] - d['nncf']['auroc'])} |",
        *_fidelity_row(s.get("fidelity_vs_fp32"), "nncf"),
        f"| | ORT CPU ms, batch 1 / 32 (FP32 {lat['fp32']['batch1_ms']:.3f} / {lat['fp32']['batch32_ms']:.2f}) "
        f"| {lat['edgekd']['batch1_ms']:.3f} / {lat['edgekd']['batch32_ms']:.2f} "
        f"| {lat['nncf']['batch1_ms']:.3f} / {lat['nncf']['batch32_ms']:.2f} "
        f"| {sp['batch1_speedup']:.2f}x / {sp['batch32_speedup']:.2f}x faster |",
        f"| mixed precision vs ORT {v['onnxruntime']} | accuracy-aware search | yes | cannot: none in "
        "`quantize_static` | — |",
    ]


def _prune_rows(p: dict[str, Any], v: dict[str, Any]) -> list[str]:
    s, lat, r = p["summary"], p["latency"], p["edgekd_vs_torch_pruning"]
    tp, n = s["torch_pruning"], s["torch_pruning"]["auroc"]["n"]
    u = lat["unpruned"]
    label = f"pruning to {p['summary']['edgekd_kd']['macs_kept']:.0%} MACs vs Torch-Pruning {v['torch-pruning']} alone"
    rows = [
        f"| {label} | test AUROC after {p['epochs']} recovery epochs ({n} seed{'s' if n > 1 else ''}; "
        f"unpruned {p['unpruned']['auroc']:.4f}) | KD {_ms(s['edgekd_kd']['auroc'])}; CE {_ms(s['edgekd_ce']['auroc'])} "
        f"| {_ms(tp['auroc'])} | KD {_pts(r['edgekd_kd']['auroc_points'])}; CE {_pts(r['edgekd_ce']['auroc_points'])} |",
        f"| | test ACC | KD {_ms(s['edgekd_kd']['acc'])}; CE {_ms(s['edgekd_ce']['acc'])} | {_ms(tp['acc'])} "
        f"| KD {_pts(100 * (s['edgekd_kd']['acc']['mean'] - tp['acc']['mean']))} |",
        f"| | ORT CPU ms, batch 1 / 32 (unpruned {u['batch1_ms']:.3f} / {u['batch32_ms']:.2f}) "
        f"| {lat['edgekd_kd']['batch1_ms']:.3f} / {lat['edgekd_kd']['batch32_ms']:.2f} "
        f"| {lat['torch_pruning']['batch1_ms']:.3f} / {lat['torch_pruning']['batch32_ms']:.2f} "
        f"| {r['edgekd_kd']['batch1_speedup']:.2f}x / {r['edgekd_kd']['batch32_speedup']:.2f}x faster |",
        f"| pruning vs NNCF {v['nncf']} | structural pruning | yes | not compared: `nncf.prune` inserts "
        "unstructured masks (no dense speed-up) | — |",
        f"| pruning vs torchdistill {v['torchdistill']} | pruning | yes | cannot: no pruning | — |",
    ]
    return rows


def markdown_table(payload: dict[str, Any]) -> str:
    """One row per measure; "cannot" where the peer has no way to do the task."""
    v = payload["versions"]
    rows = list(HEADER)
    for key, fn in (("kd", _kd_rows), ("ptq", _ptq_rows), ("sensitivity", _sens_rows), ("prune", _prune_rows)):
        if key in payload:
            rows += fn(payload[key], v)
    return "\n".join(rows)
