"""The source registry and :func:`load_data`, the single entry point from a spec string to a bundle.

A source is a function ``(arg, options, *, seed, download, root) -> SourceData`` registered with its
metadata: ``arg`` (``"required"``, ``"optional"`` or ``None``: what the positional part means),
``options`` (the accepted option keys) and a one-line ``help`` with an ``example``.

Example:
    >>> @SOURCES.register("mine", arg=None, options=("n",), help="my data", example="mine:n=10")
    ... def _mine(arg, options, *, seed, download, root): ...
    >>> "mine" in list_sources()
    True
"""

from __future__ import annotations

from collections.abc import Callable

from edgekd.data._bundle import DataBundle, SourceData
from edgekd.data._spec import check_seed, format_data_spec, opt_int, parse_data_spec
from edgekd.errors import InvalidInputError
from edgekd.registry import Registry

__all__ = ["SOURCES", "load_data", "list_sources"]

SourceFn = Callable[..., SourceData]
SOURCES: Registry[SourceFn] = Registry("data source")


def list_sources() -> list[str]:
    """Names of the registered data sources, sorted.

    Example:
        >>> "pneumoniamnist" in list_sources()
        True
    """
    return SOURCES.names()


def load_data(spec: str, *, download: bool = False, seed: int = 0, root: str | None = None) -> DataBundle:
    """Load the train / val / test splits named by a data spec.

    Args:
        spec: ``source[:arg][,key=value...]``, e.g. ``"pneumoniamnist"``, ``"medmnist:/d/chestmnist.npz"``,
            ``"imagefolder:/d/xray,size=64"``, ``"csv:/d/labels.csv"``, ``"synthetic:classes=3,n=200"``,
            ``"tv:CIFAR10"``. See :func:`list_sources`.
        download: allow network downloads (torchvision sources only).
        seed: seed of generated data and of derived splits; a ``seed=`` option in the spec wins.
        root: folder of downloadable datasets (default ``$EDGEKD_DATA`` or ``~/.cache/edgekd/datasets``).

    Returns:
        A :class:`DataBundle` whose ``spec`` is canonical (options sorted, a non-zero seed recorded).

    Raises:
        UnknownNameError: unknown source (the hint suggests close names).
        InvalidInputError: unknown option key, bad option value, missing or unexpected argument.
        ArtifactError: missing or malformed files.
        DependencyError: a dataset that must be downloaded first, or a failed download.

    Example:
        >>> bundle = load_data("synthetic:classes=3,n=60,seed=1")
        >>> len(bundle.train), bundle.num_classes
        (60, 3)
    """
    source, arg, options = parse_data_spec(spec)
    fn = SOURCES.get(source)
    meta = SOURCES.meta(source)
    _check_arg(source, arg, meta)
    _check_keys(source, options, meta)
    if "seed" in meta.get("options", ()):
        seed = opt_int(options, "seed", check_seed(seed), low=0)
        options = {k: v for k, v in options.items() if k != "seed"}
        if seed:
            options["seed"] = str(seed)
    data = fn(arg, dict(options), seed=check_seed(seed), download=download, root=root)
    return DataBundle.from_source(format_data_spec(source, arg, options), data)


def _check_arg(source: str, arg: str | None, meta: dict) -> None:
    example = meta.get("example", source)
    if meta.get("arg") == "required" and not arg:
        raise InvalidInputError(f"data source {source!r} needs an argument", f"e.g. {example}")
    if meta.get("arg") is None and arg:
        raise InvalidInputError(f"data source {source!r} takes no argument (got {arg!r})", f"e.g. {example}")


def _check_keys(source: str, options: dict[str, str], meta: dict) -> None:
    valid = tuple(meta.get("options", ()))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        keys = ", ".join(valid) if valid else "none"
        raise InvalidInputError(
            f"unknown option {unknown[0]!r} for data source {source!r}", f"valid keys for {source}: {keys}"
        )
