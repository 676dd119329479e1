"""Odd label.csv files and odd pictures: every line accounted for, one decoder, clear errors."""

from __future__ import annotations

import codecs
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_banana_split
from PIL import Image
from torchvision.io import write_png

from tinyssd import DataError, load_split, read_image
from tinyssd.data.formats.label_csv import read_label_csv

HEADER = "img_name,label,xmin,ymin,xmax,ymax"


def _csv(split_dir: Path, lines: list[str], encoding: str = "utf-8", bom: bytes = b"") -> Path:
    path = split_dir / "label.csv"
    path.write_bytes(bom + ("\n".join([HEADER, *lines]) + "\n").encode(encoding))
    return path


# ------------------------------------------------------------------ point 2: no line is lost


def test_unclosed_quote_in_an_extra_column_loses_no_row(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 8)
    rows = [f"{i}.png,0,5,5,30,30" for i in range(8)]
    rows[1] = '1.png,0,5,5,30,30,"an unclosed note'
    path = _csv(split_dir, rows)
    with pytest.raises(DataError, match=r"line 3: not a valid CSV row \(a quote opened on this line is not closed"):
        read_label_csv(path, 1)
    good, dropped = read_label_csv(path, 1, on_bad_row="skip")
    # Every physical line is accounted for: 7 rows parsed, the bad one reported by its line.
    assert [r.line for r in good] == [2, 4, 5, 6, 7, 8, 9]
    assert len(dropped) == 1 and "line 3" in dropped[0]


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_windows_and_old_mac_line_ends(tmp_path, newline):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 2)
    (split_dir / "label.csv").write_bytes(newline.join([HEADER, "0.png,0,5,5,30,30", "1.png,0,5,5,30,30", ""]).encode())
    good, _ = read_label_csv(split_dir / "label.csv", 1)
    assert [(r.line, r.img_name) for r in good] == [(2, "0.png"), (3, "1.png")]


def test_quoted_fields_on_one_line_still_parse(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 2)
    path = _csv(split_dir, ['"0.png",0,5,5,30,30,"a note, with a comma"', "1.png,0,5,5,30,30"])
    good, dropped = read_label_csv(path, 1)
    assert [r.img_name for r in good] == ["0.png", "1.png"] and not dropped


# ------------------------------------------------------------------ point 11: encodings and sizes


def test_utf8_bom_is_accepted(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 2)
    _csv(split_dir, ["0.png,0,5,5,30,30", "1.png,0,5,5,30,30"], bom=codecs.BOM_UTF8)
    assert load_split(split_dir, image_size=64).names == ["0.png", "1.png"]


def test_non_utf8_and_utf16_name_the_encoding(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 2)
    _csv(split_dir, ["0.png,0,5,5,30,30", "1.png,0,5,5,30,30,café"], encoding="latin-1")
    with pytest.raises(DataError, match=r"line 3: byte 0xe9 is not UTF-8"):
        load_split(split_dir)
    _csv(split_dir, ["0.png,0,5,5,30,30"], encoding="utf-16-le", bom=codecs.BOM_UTF16_LE)
    with pytest.raises(DataError, match="UTF-16"):
        load_split(split_dir)


def test_long_file_name_and_huge_field_are_bad_rows(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 2)
    _csv(split_dir, ["0.png,0,5,5,30,30", "x" * 300 + ".png,0,5,5,30,30", "1.png,0,5,5,30,30," + "y" * 200_000])
    with pytest.raises(DataError, match=r"line 3: img_name has a file name longer than 255 bytes"):
        load_split(split_dir)
    with pytest.warns(UserWarning, match="dropped 2 bad row"):
        split = load_split(split_dir, on_bad_row="skip", image_size=64)
    assert split.names == ["0.png"]
    assert any("line 4" in d and "longer than" in d for d in split.dropped)


def test_non_finite_coordinates_are_named(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 1)
    _csv(split_dir, ["0.png,0,nan,5,30,30"])
    with pytest.raises(DataError, match="line 2: non-finite coordinate"):
        load_split(split_dir)


# ------------------------------------------------------------------ point 13: names, duplicates, unlisted


@pytest.mark.parametrize("name", ["../x.png", "/etc/passwd", "a/../../x.png", "..\\x.png", "C:\\x.png"])
def test_names_leaving_the_split_folder_are_refused(tmp_path, name):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 1)
    write_png(torch.zeros(3, 64, 64, dtype=torch.uint8), str(tmp_path / "x.png"))
    _csv(split_dir, ["0.png,0,5,5,30,30", f"{name},0,5,5,30,30"])
    with pytest.raises(DataError, match=r"line 3: img_name .* leaves the split's images/ folder"):
        load_split(split_dir)


def test_duplicates_and_unlisted_pictures_are_counted(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 4)
    _csv(split_dir, ["0.png,0,5,5,30,30", "0.png,0,5,5,30,30", "1.png,0,5,5,30,30", "1.png,0,5,5,30,30"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = load_split(split_dir, image_size=64)
    messages = [str(w.message) for w in caught]
    assert any("2 row(s) repeat an earlier row exactly" in m and "line 3 repeats line 2" in m for m in messages)
    assert any("2 file(s) are not named in label.csv" in m and "2.png" in m for m in messages)
    # Kept, not silently altered: each duplicate is still an object.
    assert (split.labels[:, :, 0] >= 0).sum().item() == 4


# ------------------------------------------------------------------ point 8: one decoder


def _png16(path: Path, value: int, size=(64, 64)) -> None:
    Image.fromarray(np.full(size, value, dtype=np.uint16)).save(path)


def test_16_bit_pngs_are_scaled_to_8_bits_all_and_mixed(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 3)
    _png16(split_dir / "images" / "0.png", 65535)
    _png16(split_dir / "images" / "1.png", 32896)  # 0x8080 -> 0x80
    split = load_split(split_dir, image_size=64)  # mixed: 16-bit and 8-bit together
    assert split.images.dtype == torch.uint8
    assert split.images[0].max() == 255 and split.images[0].min() == 255
    assert split.images[1].max() == 128 and split.images[1].min() == 128
    assert read_image(split_dir / "images" / "0.png").max() == 255


def test_animated_gif_is_refused_by_name(tmp_path):
    split_dir = tmp_path / "s"
    write_banana_split(split_dir, 2)
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    frames[0].save(split_dir / "images" / "anim.gif", save_all=True, append_images=frames[1:])
    _csv(split_dir, ["0.png,0,5,5,30,30", "anim.gif,0,5,5,30,30"])
    with pytest.raises(DataError, match=r"anim\.gif \(named on .*label\.csv, line 3\) has 2 frames"):
        load_split(split_dir)


def test_exif_orientation_is_applied_in_training_and_prediction(tmp_path):
    from tinyssd import Detector, TinySSDModule

    split_dir = tmp_path / "s"
    (split_dir / "images").mkdir(parents=True)
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)  # stored 80 wide, 40 high
    pixels[:, :40] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown 40 wide, 80 high
    Image.fromarray(pixels).save(split_dir / "images" / "r.jpg", exif=exif, quality=95)
    _csv(split_dir, ["r.jpg,0,0,0,40,80"])  # a box over the whole picture as displayed
    split = load_split(split_dir, image_size=64)
    decoded = read_image(split_dir / "images" / "r.jpg")
    assert decoded.shape == (3, 80, 40)
    # Prediction prepares exactly the pixels training saw.
    detector = Detector(TinySSDModule(image_size=64, channels_last=False))
    assert torch.equal(detector._prepare(split_dir / "images" / "r.jpg"), decoded)
    torch.testing.assert_close(split.labels[0, 0], torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)  # claims 60000 x 60000 RGB (10 GB)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(DataError, match="claims more pixels than"):
        read_image(tmp_path / "bomb.png")


def test_truncated_and_empty_pictures_are_named_plainly(tmp_path):
    from torchvision.io import encode_jpeg

    jpeg = encode_jpeg(torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)).numpy().tobytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError) as err:
        read_image(tmp_path / "cut.jpg")
    assert "cut.jpg is not a readable image" in str(err.value) and ".cpp" not in str(err.value)
    with pytest.raises(DataError, match=r"empty\.png is empty"):
        read_image(tmp_path / "empty.png")
