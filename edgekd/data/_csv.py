"""``csv:FILE``: a table of ``path,label[,split]`` rows; paths are relative to the CSV's folder.

An optional header line ``path,label[,split]`` is skipped. Label names are the sorted distinct label strings.
Without a split column the rows are split by a seeded stratified split (options ``val=0.1,test=0.2,seed=``);
with one, every row needs ``train``, ``val`` or ``test`` (an absent val or test split is carved from train).

Example:
    >>> bundle = load_data("csv:/data/xray/labels.csv,size=64")
    >>> bundle.label_names
    ['normal', 'pneumonia']
"""

from __future__ import annotations

import csv
from pathlib import Path

from edgekd.data._bundle import SPLITS, SourceData
from edgekd.data._files import FILE_OPTIONS, FileItem, build_file_source
from edgekd.data._load import SOURCES
from edgekd.errors import ArtifactError

__all__: list[str] = []


@SOURCES.register(
    "csv",
    arg="required",
    options=FILE_OPTIONS,
    help="CSV of path,label[,split] rows (paths relative to the CSV); size=N, channels=1|3, val=, test=",
    example="csv:/data/xray/labels.csv",
)
def _csv(arg, options, *, seed, download, root) -> SourceData:
    table = Path(arg).expanduser()
    if not table.is_file():
        raise ArtifactError(
            f"CSV file {table} does not exist", "check the path (paths with commas are not supported in specs)"
        )
    rows = _read_rows(table)
    names = sorted({label for _, _, label, _ in rows})
    index = {name: i for i, name in enumerate(names)}
    items = []
    for line, rel, label, split in rows:
        path = (table.parent / rel).expanduser()
        if not path.is_file():
            raise ArtifactError(f"{table} row {line}: image {rel!r} does not exist (looked for {path})")
        items.append(FileItem(path, index[label], split, f"{table.name} row {line}"))
    return build_file_source(items, names, options, seed=seed)


def _read_rows(table: Path) -> list[tuple[int, str, str, str | None]]:
    """``(line number, path, label, split)`` per data row, validated."""
    with table.open(newline="", encoding="utf-8-sig") as fh:
        raw = [(i + 1, [c.strip() for c in row]) for i, row in enumerate(csv.reader(fh)) if any(c.strip() for c in row)]
    if raw and [c.lower() for c in raw[0][1][:2]] == ["path", "label"]:
        raw = raw[1:]
    if not raw:
        raise ArtifactError(f"{table} has no data rows", "write one path,label[,split] row per image")
    width = len(raw[0][1])
    rows = []
    for line, cells in raw:
        if len(cells) != width or width not in (2, 3) or not cells[0] or not cells[1]:
            raise ArtifactError(
                f"{table} row {line}: expected path,label[,split] like the first row, got {','.join(cells)!r}"
            )
        split = cells[2].lower() if width == 3 else None
        if split is not None and split not in SPLITS:
            raise ArtifactError(f"{table} row {line}: split {cells[2]!r} is not train, val or test")
        rows.append((line, cells[0], cells[1], split))
    return rows
