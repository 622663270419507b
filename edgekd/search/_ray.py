"""Candidate trainings through Ray Tune's ASHA scheduler (``engine: ray``; ``pip install 'edgekd[ray]'``).

Each architecture that fits is one Tune trial; a trial trains rung after rung (the same content-hashed segments
as the in-process schedule, :func:`~edgekd.search._train.train_segment`) and reports its validation score after
each; Tune's :class:`~ray.tune.schedulers.ASHAScheduler` (asynchronous successive halving, Li et al., MLSys
2020) stops the trials that fall behind, with ``halving.eta`` as its reduction factor and one rung per training
iteration. Ray's own engine runs the trials (a local Ray instance on one machine, one trial at a time; on a
cluster: ``ray.init(address=...)`` before calling, or ``RAY_ADDRESS``); edgekd schedules nothing itself. A
re-run skips the segments already trained, whichever engine trained them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgekd.data import DataBundle
from edgekd.errors import DependencyError
from edgekd.search._config import SearchConfig
from edgekd.search._space import Architecture
from edgekd.search._train import Training, teacher_identity, train_chain

__all__ = ["RAY_EXTRA", "halving_with_ray"]

RAY_EXTRA = "pip install 'edgekd[ray]'"


def _ray() -> Any:
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise DependencyError("engine ray needs Ray Tune", RAY_EXTRA) from None
    return ray


def halving_with_ray(
    cfg: SearchConfig, archs: list[Architecture], out: Path, bundle: DataBundle, time_left_s: float, say: Any
) -> tuple[list[Training], int, bool]:
    """ASHA over ``archs`` with Ray Tune; returns the finished segments, the rungs reached, whether time ran out."""
    ray = _ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    teacher_id, by_key = teacher_identity(cfg.teacher), {a.key: a for a in archs}
    rungs = len(cfg.halving.rungs)

    def trainable(config: dict[str, Any]) -> None:
        train_chain(cfg, by_key[config["arch"]], out, bundle, teacher_id, rungs, report=tune.report)

    started = not ray.is_initialized()
    if started:  # RAY_ADDRESS names a cluster; else a local Ray instance on this machine, trials in sequence
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"arch": tune.grid_search(sorted(by_key))},
            tune_config=tune.TuneConfig(
                metric="score",
                mode="max",
                reuse_actors=True,  # one worker process for the trials in sequence (torch imports once)
                max_concurrent_trials=1 if started and not os.environ.get("RAY_ADDRESS") else None,
                time_budget_s=time_left_s,
                scheduler=ASHAScheduler(max_t=rungs, grace_period=1, reduction_factor=cfg.halving.eta),
            ),
            run_config=tune.RunConfig(storage_path=str((out / "ray").resolve()), name="search", verbose=0),
        )
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    trainings: list[Training] = []
    for r in results:
        reached = int((r.metrics or {}).get("training_iteration", 0))
        arch = by_key[r.config["arch"]]
        trainings += train_chain(cfg, arch, out, bundle, teacher_id, reached)  # all reused: the records
        say(f"ray trial {arch.label}: {reached} rung(s)")
    top = max((t.rung + 1 for t in trainings), default=0)
    return trainings, top, top < rungs and any(r.metrics is None for r in results)
