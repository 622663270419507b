"""``imagefolder:DIR``: one sub-folder per class, like torchvision's ``ImageFolder``.

Either ``DIR/<class>/<image>`` (split by a seeded stratified split, options ``val=0.1,test=0.2,seed=``) or
``DIR/train/<class>/<image>`` with optional ``DIR/val`` and ``DIR/test`` trees (an absent one is carved from
train). Class names are the folder names, sorted. Images are searched recursively inside each class folder.

Example:
    >>> bundle = load_data("imagefolder:/data/xray,size=64,channels=1")
    >>> bundle.label_names
    ['normal', 'pneumonia']
"""

from __future__ import annotations

from pathlib import Path

from edgekd.data._bundle import SPLITS, SourceData
from edgekd.data._files import FILE_OPTIONS, IMAGE_EXTS, FileItem, build_file_source, is_image
from edgekd.data._load import SOURCES
from edgekd.errors import ArtifactError

__all__: list[str] = []

_LAYOUT = "expected DIR/<class>/<image> or DIR/train/<class>/<image> with optional DIR/val and DIR/test"


@SOURCES.register(
    "imagefolder",
    arg="required",
    options=FILE_OPTIONS,
    help="folder of class sub-folders (or train/val/test trees of them); size=N, channels=1|3, val=, test=",
    example="imagefolder:/data/xray,size=64",
)
def _imagefolder(arg, options, *, seed, download, root) -> SourceData:
    base = Path(arg).expanduser()
    if not base.is_dir():
        raise ArtifactError(
            f"image folder {base} does not exist", "check the path (paths with commas are not supported in specs)"
        )
    trees = {s: base / s for s in SPLITS if (base / s).is_dir()} if (base / "train").is_dir() else {None: base}
    found = {split: _scan(tree) for split, tree in trees.items()}
    classes = sorted({c for per_class in found.values() for c in per_class})
    index = {c: i for i, c in enumerate(classes)}
    items = [
        FileItem(path, index[c], split, str(path))
        for split, per_class in found.items()
        for c, paths in sorted(per_class.items())
        for path in paths
    ]
    return build_file_source(items, classes, options, seed=seed)


def _scan(tree: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files of one tree; every class folder must hold images."""
    folders = sorted(d for d in tree.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        loose = any(is_image(p) for p in tree.iterdir())
        why = "images must be inside class sub-folders" if loose else _LAYOUT
        raise ArtifactError(f"no class folders in {tree}", why)
    out = {}
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if is_image(p))
        if not files:
            raise ArtifactError(
                f"class folder {folder} has no images", f"add images ({' '.join(sorted(IMAGE_EXTS))}) or remove it"
            )
        out[folder.name] = files
    return out
