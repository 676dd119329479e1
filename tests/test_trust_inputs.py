"""Hostile inputs, round 3: each test crafts the file (data set, checkpoint, export) a user is handed.

Root causes (issue 26): strings from data never resolved as config (1), exports read no other
file (2), stride-0 / sparse / meta / quantized weights (4), terminal escapes (5), bounds and
message size (6), the readers' own exceptions (7). Each must end in one paragraph naming the
file, exit 2 where a command runs, with nothing read or written outside the target.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from helpers import compose_train, genuine_checkpoint, run_script, write_all_formats, write_banana_dataset
from torchvision.io import write_png

from tinyssd import CheckpointError, ConfigError, DataError, Detector, TinySSDModule
from tinyssd.data.formats.coco import read_coco_split
from tinyssd.data.formats.voc import read_voc_split
from tinyssd.data.formats.yolo import read_yolo_split, read_yolo_yaml
from tinyssd.deploy.detector import Detections
from tinyssd.deploy.metadata import ExportMetadata
from tinyssd.deploy.onnx_runtime import OnnxModel
from tinyssd.errors import MAX_MESSAGE_CHARS, escape_interpolation, paragraph, printable
from tinyssd.limits import MAX_OBJECTS_PER_PICTURE
from tinyssd.model.checkpoints import load_checkpoint, load_module
from tinyssd.pipeline.builders import build, build_module
from tinyssd.pipeline.evaluation import module_and_data_for_evaluation

SECRET_VARIABLE = "TINYSSD_TEST_SECRET"
SECRET = "s3cr3t-value-that-must-not-leak"
# A name that asks for an environment variable, one OmegaConf cannot parse, and a plain one.
HOSTILE_NAMES = [f"${{oc.env:{SECRET_VARIABLE}}}", "a${b", "blue"]


# --------------------------------------------------------------------------- 1. names never resolved


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_class_names_from_data_are_never_interpolated(fmt, tmp_path, monkeypatch):
    """A data set's class names reach the data module, the model and evaluation as written."""
    monkeypatch.setenv(SECRET_VARIABLE, SECRET)
    overrides = write_all_formats(tmp_path, class_names=HOSTILE_NAMES)[fmt]
    cfg = compose_train([*overrides, "data.image_size=64"], tmp_path / "run")
    datamodule = build(cfg.data, "data")
    expected = sorted(HOSTILE_NAMES) if fmt == "voc" else HOSTILE_NAMES  # VOC: the names found, sorted
    assert datamodule.class_names == expected
    module = build_module(cfg, datamodule.class_names)
    assert module.hparams["class_names"] == expected and module.class_names == expected
    # Evaluation hands the checkpoint's names to the data module: as text too.
    _, evaluation_data = module_and_data_for_evaluation(cfg, module, tmp_path / "model.ckpt")
    assert evaluation_data.class_names == expected


def test_escaped_names_read_back_as_written():
    from omegaconf import OmegaConf

    for name in [*HOSTILE_NAMES, "x\\${y}", "\\\\${z", "${", "}${a}{"]:
        node = OmegaConf.create({"names": [escape_interpolation(name)]})
        assert OmegaConf.to_container(node, resolve=True)["names"] == [name]


@pytest.mark.slow
def test_a_run_on_hostile_names_records_them_and_leaks_nothing(train_in_process, tmp_path, monkeypatch):
    """Checkpoint, config.yaml and every other file of the run hold the names, never the secret."""
    from omegaconf import OmegaConf

    monkeypatch.setenv(SECRET_VARIABLE, SECRET)
    overrides = write_all_formats(tmp_path / "yolo_data", class_names=HOSTILE_NAMES)["yolo"]
    _, run = train_in_process(*overrides, "trainer.max_epochs=1")
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["hyper_parameters"]["class_names"] == HOSTILE_NAMES
    saved = OmegaConf.load(run / "config.yaml")
    assert OmegaConf.to_container(saved.data, resolve=True)["class_names"] == HOSTILE_NAMES
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# --------------------------------------------------------------------------- 2. exports read no other file


def _onnx_model(outputs: dict, ranks: dict | None = None, metadata: dict | None = None, initializer=None):
    """A tiny ONNX graph with tinyssd's signature whose outputs are constants (a crafted export)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 3, 64, 64])
    nodes, infos = [], []
    for name, array in outputs.items():
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name)))
        rank = (ranks or {}).get(name, array.ndim)
        dtype = helper.np_dtype_to_tensor_dtype(array.dtype)
        infos.append(helper.make_tensor_value_info(name, dtype, [f"d{i}" for i in range(rank)]))
    graph = helper.make_graph(nodes, "crafted", [images], infos, initializer=initializer or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = ExportMetadata(
        class_names=["banana"], image_size=64, resize="stretch", input_dtype="uint8", nms=True, nms_threshold=0.5,
        pos_threshold=0.01, max_detections=1, display_threshold=0.9, batch=None,
    )  # fmt: skip
    text = json.dumps({**json.loads(meta.to_json()), **(metadata or {})})
    helper.set_model_props(model, {"tinyssd": text})
    return onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString()


def _nms_outputs(box=(0.1, 0.1, 0.5, 0.5), score=0.95, label=0, count=1):
    import numpy as np

    return {
        "boxes": np.array([[box]], dtype=np.float32),
        "scores": np.array([[score]], dtype=np.float32),
        "labels": np.array([[label]], dtype=np.int64),
        "num_detections": np.array([count], dtype=np.int64),
    }


def test_a_crafted_graph_runs_when_its_outputs_are_sane(tmp_path):
    path = tmp_path / "ok.onnx"
    path.write_bytes(_onnx_model(_nms_outputs()))
    (dets,) = Detector.load(path).predict(torch.zeros(3, 64, 64, dtype=torch.uint8))
    assert dets.to_list()[0]["class_name"] == "banana"


def test_an_export_with_external_data_is_refused_before_the_runtime_reads_it(tmp_path, monkeypatch):
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    entry = weights.external_data.add()
    entry.key, entry.value = "location", "outside_weights.bin"
    path = tmp_path / "model.onnx"
    path.write_bytes(_onnx_model(_nms_outputs(), initializer=[weights]))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    (workdir / "outside_weights.bin").write_bytes(b"\0" * 16)
    monkeypatch.chdir(workdir)
    with pytest.raises(CheckpointError, match="in other files"):
        OnnxModel(path)
    with pytest.raises(CheckpointError, match="in other files"):
        Detector.load(path)
    picture = tmp_path / "a.png"
    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(picture))
    result = run_script("predict.py", [f"model={path}", f"input={picture}", f"output_dir={tmp_path / 'out'}"])
    assert result.returncode == 2 and "in other files" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "detections.json").exists()


@pytest.mark.parametrize(
    ("outputs", "ranks", "needle"),
    [
        (_nms_outputs(label=5), None, "class labels outside 0..0"),
        (_nms_outputs(label=-1), None, "class labels outside"),
        (_nms_outputs(box=(float("nan"), 0.1, 0.5, 0.5)), None, "not finite"),
        (_nms_outputs(count=7), None, "num_detections outside"),
        ({**_nms_outputs(), "boxes": _nms_outputs()["boxes"][0]}, None, "rank"),
    ],
)
def test_export_outputs_are_checked_against_the_metadata(outputs, ranks, needle, tmp_path):
    path = tmp_path / "crafted.onnx"
    path.write_bytes(_onnx_model(outputs, ranks))
    with pytest.raises(CheckpointError, match=needle):
        Detector.load(path).predict(torch.zeros(3, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"image_size": 65536}, "image_size"),
        ({"batch": 10**9}, "batch"),
        ({"max_detections": 10**12}, "max_detections"),
        ({"class_names": [str(i) for i in range(20_000)]}, "classes"),
        ({"class_names": [""]}, "class names"),
    ],
)
def test_export_metadata_is_bounded(change, needle):
    meta = ExportMetadata(
        class_names=["banana"], image_size=64, resize="stretch", input_dtype="uint8", nms=True, nms_threshold=0.5,
        pos_threshold=0.01, max_detections=1, display_threshold=0.9, batch=None,
    )  # fmt: skip
    text = json.dumps({**json.loads(meta.to_json()), **change})
    with pytest.raises(CheckpointError, match=needle) as caught:
        ExportMetadata.from_json(text, "m.onnx")
    assert len(str(caught.value)) < MAX_MESSAGE_CHARS


# --------------------------------------------------------------------------- 4. weights that are not plain


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda w: torch.zeros(1).expand(w.shape), "strided view"),
        (lambda w: w.to_sparse(), "sparse"),
        (lambda w: torch.empty(w.shape, device="meta"), "meta"),
        (lambda w: torch.quantize_per_tensor(w.float(), 0.1, 0, torch.qint8), "quantized"),
        (lambda w: w.to(torch.complex64), "complex"),
    ],
)
def test_weights_that_are_not_dense_tensors_are_refused_before_any_arithmetic(make, needle, tmp_path):
    ckpt = genuine_checkpoint()
    key = "net.blocks.0.0.0.weight"
    ckpt["state_dict"][key] = make(ckpt["state_dict"][key])
    torch.save(ckpt, tmp_path / "crafted.ckpt")
    with pytest.raises(CheckpointError, match=needle) as caught:
        load_module(tmp_path / "crafted.ckpt")
    assert key in str(caught.value)


def test_a_small_file_cannot_claim_a_huge_model(tmp_path):
    """5000 classes whose head weights are stride-0 views: a few MB on disk, refused, not 419 MB in memory."""
    genuine = genuine_checkpoint()
    big = TinySSDModule(net={"_target_": "tinyssd.model.net.TinySSD", "num_classes": 50}, image_size=64)
    ckpt = copy.deepcopy(genuine)
    ckpt["hyper_parameters"]["net"]["num_classes"] = 50
    ckpt["hyper_parameters"]["class_names"] = [str(i) for i in range(50)]
    for key, value in big.state_dict().items():
        ckpt["state_dict"][key] = torch.zeros((1,) * value.ndim, dtype=value.dtype).expand(value.shape)
    torch.save(ckpt, tmp_path / "claims.ckpt")
    assert (tmp_path / "claims.ckpt").stat().st_size < sum(v.numel() for v in big.state_dict().values())
    with pytest.raises(CheckpointError, match="strided view"):
        load_module(tmp_path / "claims.ckpt")


def test_channels_last_weights_still_load(tmp_path):
    ckpt = genuine_checkpoint()
    ckpt["state_dict"] = {
        k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in ckpt["state_dict"].items()
    }
    torch.save(ckpt, tmp_path / "cl.ckpt")
    assert load_module(tmp_path / "cl.ckpt").num_classes == 1


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_a_torchscript_file_under_any_name_is_named_as_such(suffix, tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / f"model{suffix}")
    with pytest.raises(CheckpointError, match="TorchScript program"):
        load_checkpoint(tmp_path / f"model{suffix}")


@pytest.mark.parametrize("suffix", [".pt2", ".ckpt"])
def test_a_torch_export_program_under_any_name_is_named_and_never_unpickled(suffix, tmp_path, monkeypatch):
    program = torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
    torch.export.save(program, tmp_path / "model.pt2")
    (tmp_path / "model.pt2").rename(tmp_path / f"model{suffix}")
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: pytest.fail("a given program was loaded"))
    with pytest.raises(CheckpointError, match=r"torch\.export program \(\.pt2\), not a checkpoint"):
        load_checkpoint(tmp_path / f"model{suffix}")


# --------------------------------------------------------------------------- 5. terminal escapes


ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"


def test_control_characters_are_escaped_in_paragraphs_and_logs(caplog):
    import logging

    text = paragraph(DataError(f"class {ESCAPES} unknown"))
    assert not any(ch in text for ch in "\x1b\x07\x9b\u202e") and "\\x1b" in text
    with caplog.at_level(logging.INFO, logger="tinyssd"):
        logging.getLogger("tinyssd").info("classes %s\n  next line", ESCAPES)
    assert caplog.records[-1].getMessage() == printable(f"classes {ESCAPES}\n  next line")
    assert "\x1b" not in caplog.records[-1].getMessage() and "\n" in caplog.records[-1].getMessage()


def test_eval_prints_class_names_from_a_checkpoint_escaped(tmp_path):
    data_dir = write_banana_dataset(tmp_path / "data", num_train=2, num_val=2)
    torch.save(genuine_checkpoint(class_names=[f"banana{ESCAPES}"]), tmp_path / "named.ckpt")
    result = run_script(
        "eval.py",
        [f"ckpt_path={tmp_path / 'named.ckpt'}", f"data.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'logs'}"],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    shown = result.stdout + result.stderr
    assert "banana\\x1b]0;pwned" in shown
    assert not any(ch in shown for ch in "\x1b\x07\x9b\u202e")


# --------------------------------------------------------------------------- 6. bounds and message size


def test_a_checkpoint_asking_for_a_huge_input_is_refused(tmp_path):
    ckpt = genuine_checkpoint()
    ckpt["hyper_parameters"]["image_size"] = 8192
    torch.save(ckpt, tmp_path / "huge.ckpt")
    with pytest.raises(CheckpointError, match="image_size must be a number in \\[64, 2048\\]"):
        load_module(tmp_path / "huge.ckpt")


def test_yolo_class_counts_and_objects_per_picture_are_bounded(tmp_path):
    write_all_formats(tmp_path)
    yaml_path = tmp_path / "yolo" / "data.yaml"
    yaml_path.write_text("train: images/train\nval: images/val\nnc: 1000000000\n")
    with pytest.raises(DataError, match="nc must be a class count from 1 to"):
        read_yolo_yaml(yaml_path)
    yaml_path.write_text("train: images/train\nval: images/val\nnames: [banana, blue, red]\n")
    label = tmp_path / "yolo" / "labels" / "train" / "train_0.txt"
    label.write_text("0 0.5 0.5 0.1 0.1\n" * (MAX_OBJECTS_PER_PICTURE + 1))
    spec = read_yolo_yaml(yaml_path)
    with pytest.raises(DataError, match=f"more than {MAX_OBJECTS_PER_PICTURE} objects") as caught:
        read_yolo_split(spec, "train", yaml_path, spec["names"])
    assert f"{label}, line {MAX_OBJECTS_PER_PICTURE + 1}" in str(caught.value)


def test_error_paragraphs_never_print_whole_values(tmp_path):
    paths = write_all_formats(tmp_path)
    annotations = tmp_path / "coco" / "annotations" / "instances_train.json"
    data = json.loads(annotations.read_text())
    data["annotations"][0]["bbox"] = list(range(1_000_000))
    annotations.write_text(json.dumps(data))
    assert paths["coco"]
    with pytest.raises(DataError) as caught:
        read_coco_split(tmp_path / "coco" / "train", annotations, ["banana", "blue", "red"])
    assert "bbox must be four finite numbers" in str(caught.value) and len(str(caught.value)) < 1000
    assert len(paragraph(DataError("x" * 50_000_000))) <= MAX_MESSAGE_CHARS + 100


# --------------------------------------------------------------------------- 7. readers' own exceptions


@pytest.mark.parametrize(
    ("where", "value", "needle"),
    [
        ("image", [1, 2], "image id must be an integer"),
        ("image", {"a": 1}, "image id must be an integer"),
        ("image_id", [100], "image_id must be an integer"),
        ("category_id", {"id": 1}, "category_id must be an integer"),
    ],
)
def test_coco_ids_that_are_lists_or_objects_are_named(where, value, needle, tmp_path):
    write_all_formats(tmp_path)
    annotations = tmp_path / "coco" / "annotations" / "instances_train.json"
    data = json.loads(annotations.read_text())
    if where == "image":
        data["images"][0]["id"] = value
    else:
        data["annotations"][0][where] = value
    annotations.write_text(json.dumps(data))
    with pytest.raises(DataError, match=needle):
        read_coco_split(tmp_path / "coco" / "train", annotations, ["banana", "blue", "red"])


def test_deeply_nested_json_and_xml_are_named(tmp_path):
    write_all_formats(tmp_path)
    annotations = tmp_path / "coco" / "annotations" / "instances_train.json"
    annotations.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(DataError, match="nested absurdly deep"):
        read_coco_split(tmp_path / "coco" / "train", annotations, ["banana"])
    xml = tmp_path / "voc" / "Annotations" / "train_0.xml"
    xml.write_text("<annotation>" + "<a>" * 50_000 + "</a>" * 50_000 + "</annotation>")
    with pytest.raises(DataError, match="nested"):
        read_voc_split(tmp_path / "voc", "train", ["banana", "blue", "red"])


def test_yolo_reader_errors_are_paragraphs(tmp_path):
    write_all_formats(tmp_path)
    root = tmp_path / "yolo"
    yaml_path = root / "data.yaml"
    # YAML reads no/yes unquoted as booleans: named, never turned into 'False'/'True'.
    yaml_path.write_text("train: images/train\nval: images/val\nnames: [no, yes]\n")
    with pytest.raises(DataError, match="names\\[0\\] is read by YAML as the boolean false"):
        read_yolo_yaml(yaml_path)
    # A list file in Latin-1.
    (root / "train.txt").write_bytes("images/train/caf\xe9.png\n".encode("latin-1"))
    yaml_path.write_text("train: train.txt\nval: images/val\nnames: [banana, blue, red]\n")
    with pytest.raises(DataError, match="cannot be read as UTF-8"):
        read_yolo_split(read_yolo_yaml(yaml_path), "train", yaml_path, ["banana", "blue", "red"])
    # A list file naming pictures outside the data set, as COCO, VOC and banana refuse.
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((root / "images" / "train" / "train_0.png").read_bytes())
    for line in (str(outside), "../elsewhere.png"):
        (root / "train.txt").write_text(f"images/train/train_0.png\n{line}\n")
        with pytest.raises(DataError, match=r"train.txt, line 2: the picture .* leaves"):
            read_yolo_split(read_yolo_yaml(yaml_path), "train", yaml_path, ["banana", "blue", "red"])


def test_a_byte_order_mark_in_a_yolo_label_file_is_read(tmp_path):
    write_all_formats(tmp_path)
    root = tmp_path / "yolo"
    yaml_path = root / "data.yaml"
    spec = read_yolo_yaml(yaml_path)
    before = read_yolo_split(spec, "train", yaml_path, spec["names"]).labels
    label = root / "labels" / "train" / "train_1.txt"
    label.write_bytes(b"\xef\xbb\xbf" + label.read_bytes())
    after = read_yolo_split(spec, "train", yaml_path, spec["names"]).labels
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_padding_label_is_never_named_after_the_last_class():
    dets = Detections(torch.zeros(1, 4), torch.ones(1), torch.tensor([-1]), ["banana", "red"], 10, 10)
    assert dets.to_list()[0]["class_name"] == "-1"


# --------------------------------------------------------------------------- 10. Detector arguments


@pytest.fixture
def detector(tmp_path) -> Detector:
    torch.save(genuine_checkpoint(), tmp_path / "m.ckpt")
    return Detector.load(tmp_path / "m.ckpt")


def test_detector_arguments_are_checked(detector, tmp_path):
    with pytest.raises(ConfigError, match="threshold must be a number in \\[0, 1\\], got 7"):
        Detector.load(tmp_path / "m.ckpt", threshold=7)
    with pytest.raises(ConfigError, match="nms_threshold"):
        Detector.load(tmp_path / "m.ckpt", nms_threshold=-0.5)
    with pytest.raises(ConfigError, match="batch_size must be a whole number >= 1, got 0"):
        detector.predict(torch.zeros(3, 32, 32, dtype=torch.uint8), batch_size=0)
    with pytest.raises(DataError, match="NaN or infinite"):
        detector.predict(torch.full((3, 32, 32), float("nan")))
    with pytest.raises(DataError, match="values in \\[0, 1\\]"):
        detector.predict(torch.full((3, 32, 32), 200.0))
    assert len(detector.predict(torch.full((3, 32, 32), 0.5))) == 1
    assert os.environ.get(SECRET_VARIABLE) is None
