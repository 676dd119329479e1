"""The four data formats: the same pictures give the same tensors; every bad input is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import FORMAT_CLASSES, FORMAT_PICTURES, compose_train, run_train, write_all_formats

from tinyssd import CocoDataModule, DataError, VocDataModule, YoloDataModule
from tinyssd.boxes import PAD_CLASS, ignored_rows, valid_rows
from tinyssd.data.dataset import DetectionDataset
from tinyssd.errors import ConfigError
from tinyssd.pipeline.builders import build


@pytest.fixture
def formats(tmp_path: Path) -> dict[str, list[str]]:
    return write_all_formats(tmp_path / "sets")


def _datamodule(overrides: list[str], *extra: str):
    cfg = compose_train([*overrides, "data.image_size=64", *extra])
    return build(cfg.data, "data")


def _by_name(index) -> dict[str, tuple[tuple[int, int], torch.Tensor]]:
    return {
        f.stem: ((int(s[0]), int(s[1])), lab) for f, s, lab in zip(index.files, index.sizes, index.labels, strict=True)
    }


def test_the_same_pictures_in_four_formats_give_identical_tensors(formats):
    indices = {}
    for name, overrides in formats.items():
        dm = _datamodule(overrides)
        assert dm.class_names == FORMAT_CLASSES, name
        indices[name] = {split: _by_name(dm.read_split(split)) for split in ("train", "val", "test")}
    coco = indices["coco"]
    for split in ("train", "val", "test"):
        assert len(coco[split]) == len(FORMAT_PICTURES)
        for k, ((width, height), objects) in enumerate(FORMAT_PICTURES):
            size, labels = coco[split][f"{split}_{k}"]
            assert size == (width, height)
            expected = torch.tensor(
                [[c, x1 / width, y1 / height, x2 / width, y2 / height] for c, x1, y1, x2, y2 in objects]
            ).reshape(-1, 5)
            assert torch.equal(labels, expected)
        for name in ("voc", "yolo"):
            assert indices[name][split].keys() == coco[split].keys(), name
            for key, (size, labels) in coco[split].items():
                assert indices[name][split][key][0] == size
                assert torch.equal(indices[name][split][key][1], labels), (name, key)
        # The banana CSV cannot list a picture with no objects; the rest are identical.
        banana = indices["banana"][split]
        assert set(banana) == {k for k, (_, lab) in coco[split].items() if len(lab)}
        for key in banana:
            assert torch.equal(banana[key][1], coco[split][key][1])


def test_pictures_with_no_objects_are_served_as_all_background(formats):
    dm = _datamodule(formats["yolo"])
    dm.setup("fit")
    dataset = dm.datasets["val"]
    empty = [i for i, lab in enumerate(dataset.index.labels) if len(lab) == 0]
    assert len(empty) == 2 and len(dataset) == len(FORMAT_PICTURES)
    for i in empty:
        image, labels = dataset[i]
        assert image.shape == (3, 64, 64) and (labels[:, 0] == PAD_CLASS).all()
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape[0] == len(FORMAT_PICTURES) and labels.shape == (len(FORMAT_PICTURES), 3, 5)


def test_cache_none_serves_exactly_what_cache_ram_does(formats):
    ram = _datamodule(formats["coco"], "data.cache=ram", "data.resize=letterbox")
    lazy = _datamodule(formats["coco"], "data.cache=none", "data.resize=letterbox")
    assert lazy.num_workers >= 1 and ram.num_workers == 0
    ram.setup("validate"), lazy.setup("validate")
    assert lazy.datasets["val"].images is None
    for i in range(len(FORMAT_PICTURES)):
        a, b = ram.datasets["val"][i], lazy.datasets["val"][i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_coco_category_ids_map_to_classes_in_id_order(tmp_path):
    sets = write_all_formats(tmp_path, coco_ids=[12, 3, 7])  # banana=12, blue=3, red=7
    dm = _datamodule(sets["coco"])
    assert dm.class_names == ["blue", "red", "banana"]
    labels = _by_name(dm.read_split("val"))["val_1"][1]
    # val_1 holds a blue (was class 1) and a red (was 2): now ids 0 and 1.
    assert labels[:, 0].tolist() == [0.0, 1.0]


def test_voc_classes_come_from_the_train_names_sorted_or_from_class_names(tmp_path):
    sets = write_all_formats(tmp_path, class_names=["zebra", "apple", "mango"])
    assert _datamodule(sets["voc"]).class_names == ["apple", "mango", "zebra"]
    dm = _datamodule(sets["voc"], "data.class_names=[zebra,apple,mango]")
    assert dm.class_names == ["zebra", "apple", "mango"]
    with pytest.raises(DataError, match=r"class 'mango' is not one of the data set's classes"):
        _datamodule(sets["voc"], "data.class_names=[zebra,apple]").read_split("val")


def test_yolo_names_as_a_dict_and_a_path_key(tmp_path):
    sets = write_all_formats(tmp_path / "sets")
    yaml_path = tmp_path / "elsewhere" / "set.yaml"
    yaml_path.parent.mkdir()
    yaml_path.write_text(
        f"path: {tmp_path / 'sets' / 'yolo'}\ntrain: images/train\nval: images/val\nnames: {{0: banana, 1: blue, 2: red}}\n"
    )
    dm = YoloDataModule(yaml=str(yaml_path), image_size=64)
    assert dm.class_names == FORMAT_CLASSES and not dm.has_split("test")
    assert _by_name(dm.read_split("val")).keys() == _by_name(_datamodule(sets["yolo"]).read_split("val")).keys()


def test_crowd_and_difficult_objects_are_ignored_not_dropped(tmp_path):
    sets = write_all_formats(tmp_path)
    coco_json = tmp_path / "coco" / "annotations" / "instances_val.json"
    data = json.loads(coco_json.read_text())
    data["annotations"][0]["iscrowd"] = 1
    coco_json.write_text(json.dumps(data))
    xml = tmp_path / "voc" / "Annotations" / "val_0.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>"))
    for name in ("coco", "voc"):
        labels = _by_name(_datamodule(sets[name]).read_split("val"))["val_0"][1]
        assert ignored_rows(labels).tolist() == [True] and not valid_rows(labels).any(), name
        assert labels[0, 1:].tolist() == pytest.approx([4 / 64, 6 / 64, 30 / 64, 40 / 64])


def test_letterbox_keeps_shapes_and_boxes_map_back_exactly():
    from tinyssd.resize import from_canvas, placement, to_canvas, to_canvas_image

    image = torch.zeros(3, 50, 200, dtype=torch.uint8)
    image[:, 10:30, 40:100] = 255  # a white box: x 40..100, y 10..30 of a 200 x 50 picture
    canvas = to_canvas_image(image, 64, "letterbox")
    place = placement(200, 50, 64, "letterbox")
    box = torch.tensor([[40 / 200, 10 / 50, 100 / 200, 30 / 50]], dtype=torch.float64)
    on_canvas = to_canvas(box, place)
    x1, y1, x2, y2 = (on_canvas[0] * 64).tolist()
    white = (canvas[0] > 200).nonzero()
    assert white[:, 1].min() == pytest.approx(x1, abs=1) and white[:, 1].max() + 1 == pytest.approx(x2, abs=1)
    assert white[:, 0].min() == pytest.approx(y1, abs=1) and white[:, 0].max() + 1 == pytest.approx(y2, abs=1)
    assert (canvas[:, 0] == 114).all()  # the bars above the picture
    torch.testing.assert_close(from_canvas(on_canvas, place), box, rtol=0, atol=1e-12)
    # Batched: one placement per picture.
    places = torch.stack([place, placement(30, 90, 64, "letterbox"), placement(64, 64, 64, "stretch")])
    boxes = torch.rand(3, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(from_canvas(to_canvas(boxes, places), places), boxes, rtol=0, atol=1e-12)


def test_letterbox_datasets_and_detector_round_trip(formats):
    """Boxes on the canvas are the annotated boxes placed as the picture is."""
    from tinyssd.resize import placement, to_canvas

    dm = _datamodule(formats["coco"], "data.resize=letterbox")
    dm.setup("validate")
    dataset: DetectionDataset = dm.datasets["val"]
    _, labels = dataset[1]  # the 128 x 64 picture, two objects
    expected = to_canvas(dataset.index.labels[1][:, 1:].double(), placement(128, 64, 64, "letterbox")).float()
    torch.testing.assert_close(labels[:2, 1:], expected)
    assert labels[0, 2].item() == pytest.approx((16 + 8 / 2) / 64)  # y1 = 8 px / 2 + 16 px of bar


# ----------------------------------------------------------------------------- bad input


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


COCO_CASES = [
    (
        lambda d: d["annotations"][0].update(bbox=[40, 40, 60, 10]),
        r"annotation id 0: the box .* lies outside the 64x64",
    ),
    (
        lambda d: d["annotations"][0].update(category_id=99),
        r"annotation id 0: category_id 99 is not a declared category",
    ),
    (lambda d: d["annotations"][0].update(image_id=555), r"annotation id 0: image_id 555 is not in the images list"),
    (lambda d: d["images"][0].update(file_name="gone.png"), r"image id 100: the picture .*gone\.png does not exist"),
    (lambda d: d["images"][0].update(width=65), r"image id 100: the annotation says the picture is 65x64"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotation id 0: bbox must be four finite numbers"),
    (lambda d: d["images"].append(dict(d["images"][0])), r"image id 100: the image id is listed twice"),
    (lambda d: d["images"][0].update(file_name="../x.png"), r"image id 100: file_name '\.\./x\.png' leaves"),
]


@pytest.mark.parametrize(("edit", "message"), COCO_CASES)
def test_bad_coco_records_are_named(tmp_path, edit, message):
    sets = write_all_formats(tmp_path)
    _edit_json(tmp_path / "coco" / "annotations" / "instances_val.json", edit)
    with pytest.raises(DataError, match=message) as err:
        _datamodule(sets["coco"]).read_split("val")
    assert "instances_val.json" in str(err.value)


def test_malformed_coco_json_names_line_and_column(tmp_path):
    sets = write_all_formats(tmp_path)
    (tmp_path / "coco" / "annotations" / "instances_val.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(DataError, match=r"val\.json, line 2, column 12: not valid JSON"):
        _datamodule(sets["coco"]).read_split("val")


def _replace_in(relative: str, old: str, new: str):
    def edit(root: Path) -> None:
        path = root / relative
        path.write_text(path.read_text().replace(old, new))

    return edit


def _write(relative: str, text: str):
    return lambda root: (root / relative).write_text(text)


XML, TXT, STRAY = "voc/Annotations/val_0.xml", "yolo/labels/val/val_0.txt", "yolo/labels/val/stray.txt"
# (format, how the files are damaged, what the message says)
BAD_FILES = [
    (
        "voc",
        _replace_in(XML, "<xmax>30</xmax>", "<xmax>90</xmax>"),
        r"val_0\.xml, <object> 1 \(banana\): the box .* outside",
    ),
    (
        "voc",
        _replace_in(XML, "<xmin>5</xmin>", "<xmin>0</xmin>"),
        r"<object> 1 \(banana\): xmin=0.*VOC pixel indices start at 1",
    ),
    ("voc", _replace_in(XML, "<name>banana</name>", "<name>cherry</name>"), r"\(cherry\): class 'cherry' is not one"),
    ("voc", _replace_in(XML, "<ymax>40</ymax>", "<ymax>forty</ymax>"), r"<ymax> must be a number, got 'forty'"),
    ("voc", _replace_in(XML, "</annotation>", ""), r"val_0\.xml, line 1, column \d+: not well-formed XML"),
    (
        "yolo",
        _write(TXT, "0 0.5 0.5 0.2\n"),
        r"val_0\.txt, line 1: expected 5 values 'class cx cy w h', found 4",
    ),
    (
        "yolo",
        _write(TXT, "3 0.5 0.5 0.2 0.2\n"),
        r"val_0\.txt, line 1: class id 3 is not one of the data set's ids 0\.\.2",
    ),
    (
        "yolo",
        _write(TXT, "0 0.5 0.5 0.2 0.2\n1 0.95 0.5 0.2 0.2\n"),
        r"val_0\.txt, line 2: the box .* lies outside",
    ),
    (
        "yolo",
        _write(TXT, "0 0.5 0.5 nan 0.2\n"),
        r"val_0\.txt, line 1: a coordinate is not a finite number",
    ),
    ("yolo", _write(TXT, "0 0.1 0.2 0.3 0.4 0.5 0.6 0.7\n"), r"found 8"),
    (
        "yolo",
        _write(STRAY, "0 0.5 0.5 0.2 0.2\n"),
        r"stray\.txt labels a picture that val does not have",
    ),
]


@pytest.mark.parametrize(("fmt", "damage", "message"), BAD_FILES)
def test_bad_voc_elements_and_yolo_rows_are_named(tmp_path, fmt, damage, message):
    sets = write_all_formats(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        _datamodule(sets[fmt]).read_split("val")


def test_voc_missing_annotation_and_picture_are_named(tmp_path):
    sets = write_all_formats(tmp_path)
    (tmp_path / "voc" / "Annotations" / "val_2.xml").unlink()
    with pytest.raises(DataError, match=r"val\.txt, line 3: the annotation .*val_2\.xml does not exist"):
        _datamodule(sets["voc"]).read_split("val")
    (tmp_path / "voc" / "ImageSets" / "Main" / "val.txt").write_text("val_0\nval_1\n")
    (tmp_path / "voc" / "JPEGImages" / "val_1.jpg").unlink()
    with pytest.raises(DataError, match=r"val_1\.xml: the picture .*val_1\.jpg does not exist"):
        _datamodule(sets["voc"]).read_split("val")


def test_bad_yolo_yaml_is_named(tmp_path):
    sets = write_all_formats(tmp_path)
    yaml_path = tmp_path / "yolo" / "data.yaml"
    yaml_path.write_text("train: images/train\nval: [images/val\nnames: [a]\n")
    with pytest.raises(DataError, match=r"data\.yaml, line \d+, column \d+: not valid YAML"):
        _ = _datamodule(sets["yolo"]).class_names
    yaml_path.write_text("train: images/train\nval: images/val\n")
    with pytest.raises(DataError, match="names must be a non-empty list"):
        _ = _datamodule(sets["yolo"]).class_names
    yaml_path.write_text("train: images/train\nval: images/val\nnames: {0: a, 2: b}\n")
    with pytest.raises(DataError, match=r"keys of names must be the class ids 0\.\.1"):
        _ = _datamodule(sets["yolo"]).class_names


def test_a_test_split_that_is_not_there_is_a_config_error(tmp_path):
    sets = write_all_formats(tmp_path)
    dm = _datamodule(sets["coco"], "data.test.images=null", "data.test.annotations=null")
    assert not dm.has_split("test")
    with pytest.raises(ConfigError, match=r"no test split; set data.test.images and data.test.annotations"):
        dm.setup("test")
    assert not CocoDataModule(val={"images": "x", "annotations": "y.json"}).has_split("train")
    assert VocDataModule(root="x", val={"split": "val"}).has_split("val")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_train_py_reports_bad_annotations_in_one_paragraph(tmp_path, fmt):
    sets = write_all_formats(tmp_path / "sets")
    if fmt == "coco":
        _edit_json(tmp_path / "sets" / "coco" / "annotations" / "instances_train.json", COCO_CASES[0][0])
    elif fmt == "voc":
        xml = tmp_path / "sets" / "voc" / "Annotations" / "train_0.xml"
        xml.write_text(xml.read_text().replace("<xmin>5</xmin>", "<xmin>0</xmin>"))
    else:
        (tmp_path / "sets" / "yolo" / "labels" / "train" / "train_0.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    result = run_train([*sets[fmt], f"paths.log_dir={tmp_path / 'logs'}", "trainer.max_epochs=1"], timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "train_0" in result.stderr


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_detector_maps_canvas_boxes_back_to_the_picture(monkeypatch, resize):
    """A detection at the canvas place of an object comes back as the object's own pixels."""
    from tinyssd import Detector, TinySSDModule
    from tinyssd.resize import placement, to_canvas

    module = TinySSDModule(image_size=64, channels_last=False, resize=resize)
    box = torch.tensor([[30.0, 10.0, 90.0, 40.0]])  # pixels of a 120 x 48 picture
    on_canvas = to_canvas((box / torch.tensor([120, 48, 120, 48])).double(), placement(120, 48, 64, resize)).float()
    seen = {}

    def detect(images, **kwargs):
        seen["images"] = images
        return [{"boxes": on_canvas, "scores": torch.tensor([0.99]), "labels": torch.tensor([0])}]

    monkeypatch.setattr(module, "detect", detect)
    (dets,) = Detector(module).predict([torch.zeros(3, 48, 120, dtype=torch.uint8)])
    assert seen["images"].shape == (1, 3, 64, 64)
    torch.testing.assert_close(dets.boxes, box, rtol=0, atol=1e-4)
    assert (dets.width, dets.height) == (120, 48)


@pytest.mark.parametrize(("fmt", "key"), [("voc", "data.root"), ("yolo", "data.yaml")])
def test_a_format_without_its_location_names_the_key(fmt, key):
    from tinyssd.pipeline.preflight import check_config

    with pytest.raises(ConfigError, match=rf"{key} has no default and must be given: add {key}=\.\.\."):
        check_config(compose_train([f"data={fmt}"]))


def test_a_picture_that_breaks_in_a_loader_worker_is_one_paragraph(formats):
    """cache=none decodes in the workers: a picture damaged after indexing is still named plainly."""
    from tinyssd.errors import paragraph

    dm = _datamodule(formats["coco"], "data.cache=none", "data.num_workers=1", "data.batch_size=2")
    dm.setup("validate")
    picture = dm.datasets["val"].index.files[0]
    picture.write_bytes(picture.read_bytes()[:60])  # the header survives, the pixels do not
    with pytest.raises(DataError) as err:
        next(iter(dm.val_dataloader()))
    text = paragraph(err.value)
    assert text.startswith("DataError: ") and "Traceback" not in text and "File " not in text
    assert picture.name in text and "data-loader worker" in text
