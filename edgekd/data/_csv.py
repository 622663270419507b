"""``csv:FILE``: a table of ``path,label[,split]`` rows; paths are relative to the CSV's folder.

The file must be UTF-8 text (a BOM is allowed). An optional header line ``path,label[,split]`` is skipped.
Paths are relative to the CSV's folder and may not leave it (no absolute paths, no ``..`` above it).
Label names are the distinct label strings, sorted as strings (``10`` before ``9``: the order models trained
on the file already record, so class indices never change under them; the names are in every model card).
Labels that differ only in case or spacing, the same number spelt twice (``1``, ``1.0``) and fractional
numbers (measurements, not classes) are refused.
Without a split column the rows are split by a seeded stratified split (options ``val=0.1,test=0.2,seed=``);
with one, every row needs ``train``, ``val`` or ``test`` (an absent val or test split is carved from train).

Example:
    >>> bundle = load_data("csv:/data/xray/labels.csv,size=64")
    >>> bundle.label_names
    ['normal', 'pneumonia']
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from edgekd.data._bundle import SPLITS, SourceData
from edgekd.data._files import FILE_OPTIONS, FileItem, build_file_source
from edgekd.data._load import SOURCES
from edgekd.errors import ArtifactError

_HEADER_HINT = "if row 1 is a header, name its columns path,label[,split]"

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
    names = _label_names(table, rows)
    index = {name: i for i, name in enumerate(names)}
    items = []
    for line, rel, label, split in rows:
        path = _resolve(table, line, rel)
        if not path.is_file():
            where = "is a folder, not an image" if path.is_dir() else "does not exist"
            raise ArtifactError(
                f"{table} row {line}: image {rel!r} {where} (looked for {path})",
                _HEADER_HINT if line == rows[0][0] else "paths are relative to the CSV's folder",
            )
        items.append(FileItem(path, index[label], split, f"{table.name} row {line}"))
    return build_file_source(items, names, options, seed=seed)


def _resolve(table: Path, line: int, rel: str) -> Path:
    """The image path of a row: relative to the CSV's folder and inside it (checked on the text, not on disk)."""
    norm = os.path.normpath(rel)
    if os.path.isabs(rel) or rel.startswith("~") or norm == ".." or norm.startswith(".." + os.sep):
        raise ArtifactError(
            f"{table} row {line}: path {rel!r} points outside the CSV's folder",
            "paths are relative to the CSV's folder: put the CSV in a folder above the images",
        )
    return table.parent / norm


def _label_names(table: Path, rows: list[tuple[int, str, str, str | None]]) -> list[str]:
    """Sorted distinct labels (as strings); near-duplicates and fractions refused."""
    first_row = {}
    for line, _, label, _ in rows:
        first_row.setdefault(label, line)
    folded: dict[str, str] = {}
    for label in first_row:
        key = " ".join(label.casefold().split())
        if key in folded:
            raise ArtifactError(
                f"{table}: labels {folded[key]!r} (row {first_row[folded[key]]}) and {label!r} "
                f"(row {first_row[label]}) differ only in case or spacing",
                "spell each class one way",
            )
        folded[key] = label
    numbers = {label: _number(label) for label in first_row}
    if all(v is not None for v in numbers.values()):
        odd = next((label for label, v in numbers.items() if not float(v).is_integer()), None)
        if odd is not None:
            raise ArtifactError(
                f"{table} row {first_row[odd]}: label {odd!r} is not a whole number",
                "labels name classes (e.g. normal, pneumonia or 0, 1); edgekd trains classifiers",
            )
        values: dict[float, str] = {}
        for label, v in numbers.items():
            if v in values:
                raise ArtifactError(
                    f"{table}: labels {values[v]!r} and {label!r} are the same number", "spell each class one way"
                )
            values[v] = label
    return sorted(first_row)


def _number(text: str) -> float | None:
    """The finite value of a numeric label, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_rows(table: Path) -> list[tuple[int, str, str, str | None]]:
    """``(line number, path, label, split)`` per data row, validated."""
    try:
        data = table.read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read {table}: {e.strerror or type(e).__name__}") from None
    if b"\x00" in data:
        raise ArtifactError(f"{table} is a binary file, not a CSV table", "write path,label[,split] rows as UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ArtifactError(
            f"{table} is not UTF-8 text (invalid byte at line {line})",
            "save the CSV as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet program)",
        ) from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        raw = [(reader.line_num, [c.strip() for c in row]) for row in reader if any(c.strip() for c in row)]
    except csv.Error as e:
        raise ArtifactError(
            f"{table} is not a valid CSV table (line {reader.line_num}: {e})",
            "write one path,label[,split] row per image",
        ) from None
    if raw and [c.lower() for c in raw[0][1][:2]] == ["path", "label"]:
        raw = raw[1:]
    if not raw:
        raise ArtifactError(f"{table} has no data rows", "write one path,label[,split] row per image")
    width = len(raw[0][1])
    rows = []
    for line, cells in raw:
        if any("\n" in c or "\r" in c for c in cells):
            raise ArtifactError(
                f"{table} row {line}: a cell holds a line break (an unclosed quote?)",
                "write one path,label[,split] row per line",
            )
        if len(cells) != width or width not in (2, 3) or not cells[0] or not cells[1]:
            raise ArtifactError(
                f"{table} row {line}: expected path,label[,split] like the first row, got {','.join(cells)!r}"
            )
        split = cells[2].lower() if width == 3 else None
        if split is not None and split not in SPLITS:
            raise ArtifactError(f"{table} row {line}: split {cells[2]!r} is not train, val or test")
        rows.append((line, cells[0], cells[1], split))
    return rows
