"""Data: parsing banana-format folders, the data module, download/verify/extract."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import write_banana_split

from tinyssd import BananaDataModule, DataError, load_split
from tinyssd.data.download import ensure_dataset, extract_zip_safely


def test_load_split_single_object(tmp_path):
    boxes = write_banana_split(tmp_path / "s", 3, image_size=(64, 64))
    split = load_split(tmp_path / "s", num_classes=1, image_size=64)
    assert split.images.shape == (3, 3, 64, 64) and split.images.dtype == torch.uint8
    assert split.labels.shape == (3, 1, 5)
    cls, x1, y1, x2, y2 = boxes[0][0]
    torch.testing.assert_close(split.labels[0, 0], torch.tensor([cls, x1 / 64, y1 / 64, x2 / 64, y2 / 64]))


def test_load_split_several_objects_padded(tmp_path):
    write_banana_split(tmp_path / "s", 3, objects_per_image=[1, 3, 2], num_classes=3)
    split = load_split(tmp_path / "s", num_classes=3, image_size=64)
    assert split.labels.shape == (3, 3, 5)
    assert (split.labels[:, :, 0] >= 0).sum(dim=1).tolist() == [1, 3, 2]
    assert (split.labels[0, 1:] == -1).all()


def test_resize_keeps_normalised_boxes(tmp_path):
    boxes = write_banana_split(tmp_path / "s", 2, image_size=(48, 80))
    split = load_split(tmp_path / "s", image_size=32)
    assert split.images.shape == (2, 3, 32, 32)
    cls, x1, y1, x2, y2 = boxes[1][0]
    torch.testing.assert_close(split.labels[1, 0], torch.tensor([cls, x1 / 80, y1 / 48, x2 / 80, y2 / 48]))


def _rewrite_csv(split_dir: Path, rows: list[str]) -> None:
    (split_dir / "label.csv").write_text("img_name,label,xmin,ymin,xmax,ymax\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("0.png,0,10,10", "expected 6 columns"),
        ("0.png,0,ten,10,20,20", "non-numeric"),
        ("0.png,0,20,10,10,20", "xmin < xmax"),
        ("0.png,0,10,20,20,20", "ymin < ymax"),
        ("0.png,0,10,10,200,20", "outside the 64x64 picture"),
        ("missing.png,0,10,10,20,20", "does not exist"),
        ("0.png,5,10,10,20,20", "class id 5"),
    ],
)
def test_bad_rows_name_the_line(tmp_path, row, message):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 2)
    _rewrite_csv(split_dir, ["1.png,0,5,5,30,30", row])
    with pytest.raises(DataError, match=message) as err:
        load_split(split_dir)
    assert "line 3" in str(err.value) and "label.csv" in str(err.value)


def test_skip_bad_rows_warns_and_counts(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 2)
    _rewrite_csv(split_dir, ["1.png,0,5,5,30,30", "0.png,0,20,10,10,20"])
    with pytest.warns(UserWarning, match="dropped 1 bad row"):
        split = load_split(split_dir, on_bad_row="skip")
    assert split.names == ["1.png"] and len(split.dropped) == 1


def test_empty_csv_and_bad_header(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 1)
    _rewrite_csv(split_dir, [])
    with pytest.raises(DataError, match="no label rows"):
        load_split(split_dir)
    (split_dir / "label.csv").write_text("name,cls\n0.png,0\n")
    with pytest.raises(DataError, match="header"):
        load_split(split_dir)


def test_corrupt_image_names_file_and_row(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 2)
    (split_dir / "images" / "1.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"1\.png.*line 3"):
        load_split(split_dir)


def test_datamodule_batches(make_banana_dir):
    data_dir = make_banana_dir(num_train=10, num_val=4, objects_per_image=2, num_classes=2)
    dm = BananaDataModule(data_dir=str(data_dir), batch_size=4, image_size=64, num_classes=2, class_names=["a", "b"])
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.uint8
    assert labels.shape == (4, 2, 5)
    assert len(dm.val_dataloader()) == 1 and len(dm.train_dataloader()) == 3


# ------------------------------------------------------------------ download / verify / extract


def _make_archive(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _dataset_members(tmp_path: Path) -> dict[str, bytes]:
    src = tmp_path / "src"
    write_banana_split(src / "bananas_val", 2)
    return {
        f"banana-detection/bananas_val/{p.relative_to(src / 'bananas_val').as_posix()}": p.read_bytes()
        for p in sorted((src / "bananas_val").rglob("*"))
        if p.is_file()
    }


def test_existing_archive_is_verified_and_extracted(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    sha1 = _make_archive(data_dir / "banana-detection.zip", _dataset_members(tmp_path))
    root = ensure_dataset(data_dir, url="http://example.invalid/banana-detection.zip", sha1=sha1, download=False)
    assert (root / "bananas_val" / "label.csv").is_file()


def test_download_from_url_verifies_and_extracts(tmp_path):
    served = tmp_path / "served" / "banana-detection.zip"
    served.parent.mkdir()
    sha1 = _make_archive(served, _dataset_members(tmp_path))
    data_dir = tmp_path / "data"
    root = ensure_dataset(data_dir, url=served.as_uri(), sha1=sha1, progress=False)
    assert (root / "bananas_val" / "images" / "0.png").is_file()
    assert (data_dir / "banana-detection.zip").is_file()


def test_wrong_sha1_is_refused_and_nothing_extracted(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _make_archive(data_dir / "banana-detection.zip", _dataset_members(tmp_path))
    with pytest.raises(DataError, match="SHA-1") as err:
        ensure_dataset(data_dir, sha1="0" * 40, download=False)
    assert "nothing was extracted" in str(err.value)
    assert not (data_dir / "banana-detection").exists()


@pytest.mark.parametrize("bad_name", ["../evil.txt", "banana-detection/../../evil.txt", "/tmp/evil.txt"])
def test_member_outside_folder_is_refused(tmp_path, bad_name):
    archive = tmp_path / "a.zip"
    members = _dataset_members(tmp_path)
    members[bad_name] = b"x"
    _make_archive(archive, members)
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(DataError, match="nothing was extracted"):
        extract_zip_safely(archive, target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_offline_error_names_url_file_and_folder(tmp_path):
    data_dir = tmp_path / "data"
    url = "http://127.0.0.1:9/banana-detection.zip"  # nothing listens on the discard port
    with pytest.raises(DataError) as err:
        ensure_dataset(data_dir, url=url, sha1="ab" * 20, progress=False)
    text = str(err.value)
    assert url in text and "banana-detection.zip" in text and str(data_dir.resolve()) in text
    assert not (data_dir / "banana-detection.zip").exists()
