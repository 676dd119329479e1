"""The banana format's ``label.csv``, read line by line: every physical line is accounted for.

Columns ``img_name,label,xmin,ymin,xmax,ymax`` (pixels; several rows per image = several
objects; more columns are allowed and ignored). Each line is the header, a blank line, a row,
or a bad row reported with its line number (``on_bad_row=error`` stops at it, ``skip`` drops it
with a warning). :mod:`tinyssd.data.formats.banana` turns the rows into a split's index.
"""

from __future__ import annotations

import codecs
import csv
import math
from dataclasses import dataclass
from pathlib import Path

from tinyssd.data.index import (
    check_relative_name,
)
from tinyssd.errors import ConfigError, DataError

__all__ = ["LABEL_COLUMNS", "LabelRow", "bad_row", "duplicate_rows", "read_label_csv"]


LABEL_COLUMNS = ("img_name", "label", "xmin", "ymin", "xmax", "ymax")


@dataclass
class LabelRow:
    line: int
    img_name: str
    label: int
    box: tuple[float, float, float, float]


def bad_row(csv_path: Path, line: int, problem: str, on_bad_row: str, dropped: list[str]) -> None:
    """One bad line of label.csv: raise it (``on_bad_row=error``) or add it to ``dropped`` (``skip``)."""
    message = f"{csv_path}, line {line}: {problem}"
    if on_bad_row == "skip":
        dropped.append(message)
        return
    raise DataError(f"{message}. Fix or remove that row, or set data.on_bad_row=skip to drop bad rows with a warning.")


def _read_lines(csv_path: Path) -> list[str]:
    """The file's physical lines as UTF-8 text (a UTF-8 byte-order mark, as Excel writes, is accepted)."""
    try:
        raw = csv_path.read_bytes()
    except OSError as err:
        raise DataError(f"{csv_path} cannot be read ({err.strerror or err}).") from err
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise DataError(
            f"{csv_path} is UTF-16/UTF-32 text (it starts with that byte-order mark); label.csv must be UTF-8. "
            "Save it again as 'CSV UTF-8'."
        )
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{csv_path}, line {line}: byte 0x{raw[err.start]:02x} is not UTF-8 text; label.csv must be UTF-8. "
            "Save it again as UTF-8 (for example `iconv -f latin1 -t utf-8 label.csv`)."
        ) from err
    # Universal newlines: \r\n (Windows) and a lone \r (old Mac) end a line as \n does.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _parse_line(line: str) -> list[str]:
    """One physical line as CSV fields; a record never spans lines (an open quote is an error)."""
    try:
        return next(csv.reader([line], strict=True))
    except csv.Error as err:
        reason = str(err)
        if "unexpected end of data" in reason:
            reason = "a quote opened on this line is not closed on it"
        elif "field larger than field limit" in reason:
            reason = f"a field is longer than {csv.field_size_limit()} characters"
        raise ValueError(f"not a valid CSV row ({reason})") from err


def read_label_csv(
    csv_path: Path, num_classes: int, on_bad_row: str = "error", classes_from: str | None = None
) -> tuple[list[LabelRow], list[str]]:
    """Parse a banana-format ``label.csv``; returns the good rows and the dropped-row messages.

    Every physical line is accounted for: the header, a blank line, a row, or a bad row
    reported with its line number (an error, or with ``on_bad_row=skip`` a dropped row).
    ``classes_from`` names where ``num_classes`` came from (e.g. a checkpoint) for the message
    about a class id out of range.
    """
    if on_bad_row not in ("error", "skip"):
        raise ConfigError(f"data.on_bad_row must be 'error' or 'skip', got {on_bad_row!r}.")
    if not csv_path.is_file():
        raise DataError(f"{csv_path} does not exist; a banana-format split needs label.csv beside images/.")
    lines = _read_lines(csv_path)
    try:
        header = _parse_line(lines[0]) if lines else None
    except ValueError:
        header = [lines[0]]
    if header is None or [h.strip() for h in header[:6]] != list(LABEL_COLUMNS):
        shown = repr(header)[:200] + ("..." if len(repr(header)) > 200 else "")
        raise DataError(f"{csv_path}, line 1: the header is {shown} but must start with {','.join(LABEL_COLUMNS)}.")
    rows: list[LabelRow] = []
    dropped: list[str] = []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            record = _parse_line(line)
        except ValueError as err:
            bad_row(csv_path, line_no, str(err), on_bad_row, dropped)
            continue
        if all(not v.strip() for v in record):  # ",,,,,": a blank row as spreadsheets write it
            continue
        if len(record) < len(LABEL_COLUMNS):
            bad_row(csv_path, line_no, f"expected 6 columns, found {len(record)} ({record})", on_bad_row, dropped)
            continue
        name = record[0].strip()
        problem = check_relative_name(name, "img_name", "the split's images/ folder")
        if problem:
            bad_row(csv_path, line_no, problem, on_bad_row, dropped)
            continue
        try:
            label = int(record[1])
            x1, y1, x2, y2 = (float(v) for v in record[2:6])
        except ValueError:
            bad_row(csv_path, line_no, f"non-numeric label or coordinate in {record[:6]}", on_bad_row, dropped)
            continue
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            bad_row(csv_path, line_no, f"non-finite coordinate in {record[2:6]}", on_bad_row, dropped)
            continue
        if not 0 <= label < num_classes:
            if classes_from:
                raise DataError(
                    f"{csv_path}, line {line_no}: class id {label}, but {classes_from} detects {num_classes} "
                    f"class(es) (ids 0..{num_classes - 1}). Evaluate it on data with its classes, or use a "
                    "checkpoint trained on this data's classes."
                )
            bad_row(
                csv_path,
                line_no,
                f"class id {label} is outside 0..{num_classes - 1} (data.num_classes={num_classes}; "
                "set data.num_classes and data.class_names if the data has more classes)",
                on_bad_row,
                dropped,
            )
            continue
        if not (x1 < x2 and y1 < y2):
            bad_row(
                csv_path,
                line_no,
                f"empty box: need xmin < xmax and ymin < ymax, got {record[2:6]}",
                on_bad_row,
                dropped,
            )
            continue
        rows.append(LabelRow(line_no, name, label, (x1, y1, x2, y2)))
    if not rows and not dropped:
        raise DataError(f"{csv_path} has no label rows; add one row per object (img_name,label,xmin,ymin,xmax,ymax).")
    return rows, dropped


def duplicate_rows(rows: list[LabelRow]) -> list[tuple[int, int]]:
    """(line, line of its first copy) for rows repeating an earlier row's image, class and box."""
    first: dict[tuple, int] = {}
    repeats = []
    for r in rows:
        key = (r.img_name, r.label, r.box)
        if key in first:
            repeats.append((r.line, first[key]))
        else:
            first[key] = r.line
    return repeats
