"""What predict's ``source=`` names: pictures, videos, folders, globs and ``.txt`` lists, sorted by kind.

A folder, a glob or a list may hold other files (notes, labels, broken links): they are passed
over by their suffix and reported, never an error; a file named alone is tried as a picture
whatever its suffix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tinyssd.errors import DataError, printable
from tinyssd.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES

__all__ = ["LIST_SUFFIX", "Sources", "expand_inputs"]

# A source= file with this suffix lists the pictures and videos to read, one path per line.
LIST_SUFFIX = ".txt"


@dataclass
class Sources:
    """What ``source=`` names: pictures and videos to process, and what was passed over (path, reason)."""

    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, path: Path, named: bool = False) -> None:
        """File ``path`` by its suffix; ``named``: the user named it alone, so any suffix is tried as a picture."""
        suffix = path.suffix.lower()
        if path.is_symlink() and not path.exists():
            self.skipped.append((path, "a broken symbolic link"))
        elif path.is_dir():
            self.skipped.append((path, "a folder (not searched; a glob such as DIR/**/*.jpg searches folders)"))
        elif not path.is_file():
            self.skipped.append((path, "not a regular file"))
        elif suffix in VIDEO_SUFFIXES:
            self.videos.append(path)
        elif suffix in IMAGE_SUFFIXES or named:
            self.images.append(path)
        else:
            self.skipped.append((path, "not a picture or video by its suffix"))


def _read_list(path: Path) -> Sources:
    """A text file naming one picture or video per line (relative to the file's folder; ``#`` comments)."""
    sources = Sources()
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"the list {path} cannot be read as UTF-8 text ({err}); give one path per line.") from err
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        item = Path(entry).expanduser()
        item = item if item.is_absolute() else path.parent / item
        if not item.exists() and not item.is_symlink():
            raise DataError(
                f"{path}, line {number}: {printable(entry)} does not exist (relative paths are read from "
                f"{path.parent}); fix the line or remove it."
            )
        sources.add(item)
    return sources


def expand_inputs(spec: str | os.PathLike) -> Sources:
    """``source=``: a picture, a video, a folder (its pictures and videos, sorted), a glob, or a ``.txt``
    list of paths. Files of other kinds in a folder, a glob or a list are skipped and reported."""
    import glob

    text = str(spec)
    path = Path(text).expanduser()
    sources = Sources()
    if path.is_dir():
        for item in sorted(p for p in path.iterdir() if not p.name.startswith(".")):
            sources.add(item)
        what = f"folder {path}"
    elif path.is_file() and path.suffix.lower() == LIST_SUFFIX:
        sources, what = _read_list(path), f"the list {path}"
    elif path.is_file():
        sources.add(path, named=True)
        return sources
    elif any(ch in text for ch in "*?["):
        for item in sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)):
            if not item.is_dir():  # ** matches the folders on the way too
                sources.add(item)
        what = f"the pattern {text!r}"
    elif path.exists():
        raise DataError(f"source {text} is not a regular file or folder; give a picture, a video, a folder or a glob.")
    else:
        raise DataError(f"source {text} does not exist; give a picture, a video, a folder, a glob or a .txt list.")
    if not sources.images and not sources.videos:
        found = f" ({len(sources.skipped)} other file(s), e.g. {sources.skipped[0][0].name})" if sources.skipped else ""
        raise DataError(
            f"{what} names no pictures or videos{found}; pictures end in {', '.join(IMAGE_SUFFIXES)}, videos in "
            f"{', '.join(VIDEO_SUFFIXES)}. Point source at the files you mean."
        )
    return sources
