"""Getting the banana data set: download, SHA-1 check, extraction that cannot escape its folder."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tinyssd.errors import DataError

__all__ = [
    "BANANA_SHA1",
    "BANANA_URL",
    "DATASET_DIRNAME",
    "download_file",
    "ensure_dataset",
    "extract_zip_safely",
    "sha1_of",
]

BANANA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/banana-detection.zip"
BANANA_SHA1 = "5de26c8fce5ccdea9f91267273464dc968d20d72"
DATASET_DIRNAME = "banana-detection"


def sha1_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-1 of a file."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (through ``dest.part``, so a failed download leaves nothing)."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                bar.update(len(block))
    part.replace(dest)
    return dest


def extract_zip_safely(archive: Path, target_dir: Path) -> None:
    """Extract ``archive`` into ``target_dir``, refusing any member that would land outside it.

    Every member is checked before anything is written, so a bad archive extracts nothing.
    """
    target = target_dir.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename
                dest = (target / name).resolve()
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                if name.startswith(("/", "\\")) or Path(name).is_absolute() or ".." in Path(name).parts:
                    raise DataError(
                        f"archive {archive} has a member with an unsafe path ({name!r}); nothing was extracted. "
                        "Use the original banana-detection.zip or an archive whose paths stay inside its folder."
                    )
                if (dest != target and target not in dest.parents) or is_link:
                    raise DataError(
                        f"archive {archive} member {name!r} would be written outside {target} (or is a link); "
                        "nothing was extracted. Use an archive whose members are plain files inside its folder."
                    )
            zf.extractall(target)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive} is not a readable zip archive ({err}); delete it and download it again.") from err


def _dataset_present(root: Path) -> bool:
    return (root / "bananas_train" / "label.csv").is_file() or (root / "bananas_val" / "label.csv").is_file()


def ensure_dataset(
    data_dir: str | os.PathLike,
    url: str = BANANA_URL,
    sha1: str | None = BANANA_SHA1,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Make ``<data_dir>/banana-detection`` exist and return it.

    Uses the unpacked tree if present; else ``<data_dir>/banana-detection.zip``; else
    downloads the archive. The archive's SHA-1 is checked before it is opened.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    root = data_dir / DATASET_DIRNAME
    if _dataset_present(root):
        return root
    archive = data_dir / (Path(url).name or f"{DATASET_DIRNAME}.zip")
    if not archive.is_file():
        if not download:
            raise DataError(
                f"no dataset at {root} and no archive at {archive}. Put a copy of {archive.name} "
                f"(from {url}) in {data_dir}, or point data.data_dir at the folder that holds {DATASET_DIRNAME}/."
            )
        try:
            download_file(url, archive, progress=progress)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise DataError(
                f"the banana dataset is not in {data_dir} and could not be downloaded from {url} ({err}). "
                f"Download {archive.name} (SHA-1 {sha1}) on a machine with network access and put it in "
                f"{data_dir}, or point data.data_dir at a folder that already holds {DATASET_DIRNAME}/ "
                f"(for example data.data_dir=../shared/data)."
            ) from err
    if sha1:
        actual = sha1_of(archive)
        if actual != sha1:
            raise DataError(
                f"{archive} has SHA-1 {actual} but {sha1} was expected; it is corrupt or not the banana "
                f"dataset, so nothing was extracted. Delete it and download it again from {url}."
            )
    extract_zip_safely(archive, data_dir)
    if not _dataset_present(root):
        raise DataError(
            f"{archive} was extracted but {root} still has no bananas_train/label.csv or bananas_val/label.csv; "
            "the archive does not hold a banana-format dataset."
        )
    return root
