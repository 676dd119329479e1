"""Exported models: ONNX Runtime, torch.export and TorchScript give the checkpoint's detections.

The fast tests export a seeded, untrained TinySSD (its random heads give detections
everywhere, so every path of the graph is exercised); the slow one exports a briefly trained
checkpoint through export.py and compares predict.py and eval.py on it.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FORMAT_PICTURES, ROOT, TINY_ARGS, compose_train, run_predict, run_script, write_all_formats
from torchvision.io import write_png

from tinyssd import ConfigError, Detector, TinySSDError, TinySSDModule
from tinyssd.deploy.export import export_model, read_torchscript_metadata
from tinyssd.deploy.graph import DetectionGraph, detection_difference, graph_detections
from tinyssd.deploy.metadata import METADATA_KEY, ExportMetadata
from tinyssd.deploy.onnx_runtime import OnnxModel
from tinyssd.deploy.program import read_program_metadata, run_program

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = 64
TOLERANCE = 1e-4


def _module(num_classes: int = 3, seed: int = 0, **hparams) -> TinySSDModule:
    torch.manual_seed(seed)
    names = ["banana", "blue", "red"][:num_classes]
    module = TinySSDModule(
        net={"_target_": "tinyssd.model.net.TinySSD", "num_classes": num_classes},
        class_names=names,
        image_size=SIZE,
        **hparams,
    )
    return module.eval()


@pytest.fixture(scope="module")
def shared_onnx(tmp_path_factory) -> tuple[TinySSDModule, Path]:
    """One seeded three-class model (letterbox) and its ONNX export, for the tests that only read it."""
    module = _module(resize="letterbox")
    path, _ = export_model(module, tmp_path_factory.mktemp("shared") / "m.onnx")
    return module, path


def _pictures(count: int, seed: int = 1) -> torch.Tensor:
    """Distinct (count, 3, SIZE, SIZE) uint8 pictures: smooth shapes, not noise."""
    generator = torch.Generator().manual_seed(seed)
    pictures = torch.zeros(count, 3, SIZE, SIZE, dtype=torch.uint8)
    for i in range(count):
        pictures[i] = torch.randint(0, 60, (3, 1, 1), generator=generator)
        for _ in range(i % 4):
            x, y = torch.randint(0, SIZE - 16, (2,), generator=generator).tolist()
            w, h = torch.randint(8, 24, (2,), generator=generator).tolist()
            pictures[i, :, y : y + h, x : x + w] = torch.randint(100, 255, (3, 1, 1), generator=generator)
    return pictures


def _exported(fmt: str, path: Path, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per-image detections of an exported file (ONNX Runtime, torch.export.load or torch.jit.load)."""
    if fmt == "onnx":
        return OnnxModel(path).detect(images)
    if fmt == "torch_export":
        return graph_detections(run_program(path, images))
    return graph_detections(torch.jit.load(str(path))(images))


def _assert_same(actual: list[dict], expected: list[dict]) -> None:
    """Same detections per image: counts, labels, scores and boxes within 1e-4 (near-equal
    scores may come in either order; :func:`tinyssd.deploy.graph.detection_difference`)."""
    assert [len(d["scores"]) for d in actual] == [len(d["scores"]) for d in expected]
    assert detection_difference(expected, actual) <= TOLERANCE


def _kept_scores(module: TinySSDModule, picture: torch.Tensor) -> list[float]:
    module.hparams.pos_threshold = 1e-6
    (dets,) = module.detect(picture[None], max_detections=None)
    return dets["scores"].tolist()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "wanted"),
    [("onnx", 0), ("onnx", 1), ("onnx", 3), ("torchscript", 0), ("torch_export", 3)],
)
def test_exported_detections_equal_pytorch_with_0_1_and_several_objects(tmp_path, fmt, wanted):
    module = _module()
    pictures = _pictures(4)
    # A score threshold between the picture's wanted-th and next kept score: exactly `wanted`
    # detections on picture 3 (NMS on the boxes above a threshold keeps a prefix of this list).
    scores = _kept_scores(module, pictures[3])
    module.hparams.pos_threshold = (scores[0] + 0.01) if wanted == 0 else (scores[wanted - 1] + scores[wanted]) / 2
    expected = module.detect(pictures)
    assert len(expected[3]["scores"]) == wanted
    path, _ = export_model(module, tmp_path / f"m.{fmt}", fmt)
    _assert_same(_exported(fmt, path, pictures), expected)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "torch_export"])
def test_a_dynamic_batch_gives_each_picture_the_same_result_as_alone(tmp_path, fmt, shared_onnx):
    pictures = _pictures(7)
    if fmt == "onnx":
        module, path = shared_onnx
    else:
        module = _module(num_classes=2)
        path, meta = export_model(module, tmp_path / f"m.{fmt}", fmt)
        assert meta.batch is None
    together = _exported(fmt, path, pictures)
    alone = [d for i in range(7) for d in _exported(fmt, path, pictures[i : i + 1])]
    _assert_same(together, alone)
    _assert_same(together, module.detect(pictures))
    assert all(len(d["scores"]) == 100 for d in together)  # top max_detections, padded rows dropped


def test_a_fixed_batch_graph_takes_that_many_pictures_and_detector_pads_the_rest(tmp_path):
    module = _module()
    path, meta = export_model(module, tmp_path / "fixed.onnx", batch=3)
    onnx = OnnxModel(path)
    assert meta.batch == 3 and onnx.session.get_inputs()[0].shape == [3, 3, SIZE, SIZE]
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        onnx.run(_pictures(2).numpy())
    pictures = _pictures(5)
    _assert_same(onnx.detect(pictures), module.detect(pictures))


def test_float_input_and_letterbox_metadata_round_trip(tmp_path):
    module = _module(resize="letterbox", display_threshold=0.6, max_detections=20)
    onnx_path, meta = export_model(module, tmp_path / "f.onnx", input_dtype="float32")
    ts_path, _ = export_model(module, tmp_path / "f.torchscript", "torchscript", input_dtype="float32")
    pt2_path, _ = export_model(module, tmp_path / "f.pt2", "torch_export", input_dtype="float32")
    expected = ExportMetadata(
        class_names=["banana", "blue", "red"],
        image_size=SIZE,
        resize="letterbox",
        input_dtype="float32",
        nms=True,
        nms_threshold=0.5,
        pos_threshold=module.hparams.pos_threshold,
        max_detections=20,
        display_threshold=0.6,
        batch=None,
    )
    onnx = OnnxModel(onnx_path)
    assert meta == expected and onnx.metadata == expected and read_torchscript_metadata(ts_path) == expected
    assert read_program_metadata(pt2_path) == expected
    assert onnx.session.get_inputs()[0].type == "tensor(float)"
    pictures = _pictures(3)
    _assert_same(onnx.detect(pictures), module.detect(pictures))  # uint8 canvas converted to [0, 1]
    ts_dets = _exported_float_ts(ts_path, pictures)
    _assert_same(ts_dets, module.detect(pictures))
    assert [len(d["scores"]) for d in ts_dets] == [20, 20, 20]
    _assert_same(graph_detections(run_program(pt2_path, pictures.float() / 255)), module.detect(pictures))
    detector = Detector.load(onnx_path)
    assert (detector.image_size, detector.resize, detector.class_names) == (SIZE, "letterbox", expected.class_names)


def _exported_float_ts(path: Path, pictures: torch.Tensor) -> list[dict]:
    return graph_detections(torch.jit.load(str(path))(pictures.float() / 255))


def test_raw_outputs_leave_nms_to_tinyssd_with_any_threshold(tmp_path):
    module = _module()
    path, meta = export_model(module, tmp_path / "raw.onnx", nms=False)
    onnx = OnnxModel(path)
    assert meta.outputs == ["anchors", "class_probs", "boxes"]
    pictures = _pictures(4)
    raw = onnx.run(pictures.numpy())
    assert raw["anchors"].shape == (DetectionGraph(module).anchors.shape[0], 4)
    assert raw["class_probs"].shape == (4, raw["anchors"].shape[0], 4)
    np.testing.assert_allclose(raw["class_probs"].sum(-1), 1.0, atol=1e-5)
    _assert_same(onnx.detect(pictures), module.detect(pictures))
    _assert_same(onnx.detect(pictures, nms_threshold=0.3), module.detect(pictures, nms_threshold=0.3))


def test_detector_on_an_onnx_file_gives_the_checkpoints_detections(shared_onnx):
    module, path = shared_onnx
    images = [torch.randint(0, 255, (3, h, w), dtype=torch.uint8) for h, w in ((40, 90), (64, 64), (120, 30))]
    from_onnx = Detector.load(path, threshold=0.0).predict(images, batch_size=2)
    from_module = Detector(copy.deepcopy(module), threshold=0.0).predict(images, batch_size=2)
    for a, b in zip(from_onnx, from_module, strict=True):
        assert len(a.to_list()) == 100
        assert_same_json_detections(a.to_list(), b.to_list())


def assert_same_json_detections(actual: list[dict], expected: list[dict]) -> None:
    """Equal rows up to the last printed digit: float32 kernels differ in the 7th digit, which can
    tip a rounding (scores within 2e-5, boxes 0.02 px) or swap two near-equal scores."""

    def tensors(rows: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "boxes": torch.tensor([r["box"] for r in rows], dtype=torch.float64).reshape(-1, 4),
            "scores": torch.tensor([r["score"] for r in rows], dtype=torch.float64),
            "labels": torch.tensor([r["label"] for r in rows]),
        }

    assert [r["class_name"] for r in actual] == [r["class_name"] for r in expected] or len(actual) == len(expected)
    assert detection_difference([tensors(expected)], [tensors(actual)], score_tolerance=2.1e-5) <= 0.0201


# ----------------------------------------------------------------------------- refused input


def _save_checkpoint(module: TinySSDModule, path: Path) -> Path:
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": copy.deepcopy(dict(module.hparams))}, path)
    return path


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    return _save_checkpoint(_module(), tmp_path_factory.mktemp("ckpt") / "small.ckpt")


def _export_cli(*args: str):
    return run_script("export.py", list(args), timeout=300)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["format=tflite"], "format='tflite' is not an export format"),
        (["opset=7"], "opset=7 is not supported"),
        (["format=torchscript", "batch=4"], "format=torchscript graph takes any batch"),
        (["format=torch_export", "opset=18"], "opset is an ONNX setting; drop it for format=torch_export"),
        (["quantize=int4"], "quantize='int4' is not a quantization"),
        (["quantize=int8", "format=torchscript"], "quantize=int8 quantizes an ONNX graph"),
        (["quantize=int8", "calibration=0"], "calibration=0 must be a number of training pictures"),
        (["batch=0"], "batch=0 must be dynamic"),
        (["dtype=float16"], "dtype='float16' is not an input type"),
        (["output=/proc/nowhere/m.onnx"], "cannot be written"),
        (["output=/proc"], "is a folder"),
    ],
)
def test_export_refuses_bad_options_with_one_paragraph(small_ckpt, tmp_path, overrides, message):
    from tinyssd.pipeline.exporting import export_from_config

    cfg = compose_train([f"ckpt_path={small_ckpt}", f"output={tmp_path / 'm.onnx'}", *overrides], config_name="export")
    with pytest.raises(ConfigError, match=message):
        export_from_config(cfg)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow  # a subprocess: its imports take seconds
def test_export_cli_refuses_a_file_that_is_not_a_checkpoint_with_one_paragraph(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    result = _export_cli(f"ckpt_path={junk}", f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "junk.ckpt is not a loadable tinyssd checkpoint" in result.stderr
    assert not junk.with_suffix(".onnx").exists()


def _edit_metadata(source: Path, target: Path, value: str | None) -> Path:
    import onnx

    model = onnx.load(str(source))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if value is not None:
        model.metadata_props.add(key=METADATA_KEY, value=value)
    onnx.save(model, str(target))
    return target


def test_exported_files_it_cannot_trust_are_refused(tmp_path, shared_onnx):
    path = shared_onnx[1]
    data = json.loads(OnnxModel(path).metadata.to_json())
    (tmp_path / "fake.onnx").write_text("hello")
    (tmp_path / "m.torchscript").write_bytes(b"PK")
    (tmp_path / "m.pt2").write_bytes(b"PK")
    cases = {
        "other size": (path, {"image_size": 128}, "takes 64x64 pictures but image_size=128"),
        "no metadata": (_edit_metadata(path, tmp_path / "bare.onnx", None), {}, "not one exported by tinyssd"),
        "size edited": (
            _edit_metadata(path, tmp_path / "edited.onnx", json.dumps({**data, "image_size": 128})),
            {},
            "its graph takes tensor(uint8)",
        ),
        "code in metadata": (
            _edit_metadata(path, tmp_path / "code.onnx", json.dumps({**data, "resize": "os.system"})),
            {},
            "resize='os.system'",
        ),
        "not json": (_edit_metadata(path, tmp_path / "nj.onnx", "{not json"), {}, "is not valid JSON"),
        "not onnx": (tmp_path / "fake.onnx", {}, "could not be loaded by ONNX Runtime"),
        "missing": (tmp_path / "missing.onnx", {}, "does not exist"),
        "torchscript": (tmp_path / "m.torchscript", {}, "TorchScript export"),
        "torch.export": (tmp_path / "m.pt2", {}, "is a torch.export program: run it with torch.export.load"),
        "fixed nms": (path, {"nms_threshold": 0.3}, "cannot change it"),
    }
    for name, (model, options, message) in cases.items():
        with pytest.raises(TinySSDError, match=re.escape(message)):
            Detector.load(model, **options)
            pytest.fail(name)


@pytest.mark.slow  # a subprocess: its imports take seconds
def test_predict_cli_refuses_an_export_of_another_input_size(tmp_path, shared_onnx):
    path = shared_onnx[1]
    picture = tmp_path / "p.png"
    write_png(torch.zeros(3, 20, 20, dtype=torch.uint8), str(picture))
    result = run_predict([f"model={path}", f"input={picture}", f"output_dir={tmp_path / 'out'}", "image_size=128"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "m.onnx takes 64x64 pictures but image_size=128 was asked for" in result.stderr


@pytest.mark.slow  # a subprocess: its imports take seconds
def test_onnx_runs_without_pytorch_as_the_readme_shows(tmp_path, shared_onnx):
    """examples/onnx_predict.py (the README's snippet) with torch made unimportable."""
    import subprocess

    path = shared_onnx[1]
    picture = tmp_path / "p.png"
    write_png(_pictures(4)[3], str(picture))
    code = (
        "import runpy, sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
        f"sys.argv = ['onnx_predict.py', {str(path)!r}, {str(picture)!r}, '0.0']; "
        f"runpy.run_path({str(ROOT / 'examples' / 'onnx_predict.py')!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.strip().splitlines()]
    (dets,) = Detector.load(path, threshold=0.0).predict([picture])  # the same runtime: the same order
    expected = dets.to_list()
    assert len(rows) == len(expected) == 100
    for row, det in zip(rows, expected, strict=True):
        assert row[0] == det["class_name"] and abs(float(row[1]) - det["score"]) < 1e-3
        assert np.allclose([float(v) for v in row[2:]], det["box"], atol=0.05)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """A briefly trained three-class checkpoint (pictures with 0-3 objects), exported as export.py does."""
    from tinyssd.pipeline.training import train

    tmp = tmp_path_factory.mktemp("exported_run")
    sets = write_all_formats(tmp / "sets")
    run = tmp / "run"
    train(compose_train([*sets["coco"], *TINY_ARGS, "trainer.max_epochs=2"], run))
    ckpt = run / "checkpoints" / "last.ckpt"
    from tinyssd.pipeline.exporting import export_from_config

    for fmt in ("onnx", "torchscript", "torch_export"):
        summary = export_from_config(compose_train([f"ckpt_path={ckpt}", f"format={fmt}"], config_name="export"))
        assert summary["max_difference_vs_pytorch"] <= TOLERANCE
    return sets, tmp, ckpt


@pytest.mark.slow
def test_trained_checkpoint_exports_equal_pytorch_on_pictures_with_0_1_and_several_objects(exported_run):
    from tinyssd.model.checkpoints import load_module
    from tinyssd.resize import to_canvas_image

    _, tmp, ckpt = exported_run
    module = load_module(ckpt).eval()
    size = int(module.hparams.image_size)
    files = sorted((tmp / "sets" / "coco" / "val").iterdir())
    objects = [len(objs) for _, objs in FORMAT_PICTURES]
    assert {0, 1}.issubset(objects) and max(objects) >= 2 and len(files) == len(FORMAT_PICTURES)
    from tinyssd.images import read_image

    pictures = torch.stack([to_canvas_image(read_image(f), size, "stretch") for f in files])
    expected = module.detect(pictures)
    assert all(len(d["scores"]) for d in expected)
    _assert_same(_exported("onnx", ckpt.with_suffix(".onnx"), pictures), expected)
    with torch.no_grad():
        _assert_same(_exported("torchscript", ckpt.with_suffix(".torchscript"), pictures), expected)
    _assert_same(_exported("torch_export", ckpt.with_suffix(".pt2"), pictures), expected)


@pytest.mark.slow
def test_trained_checkpoint_exports_give_its_predictions_and_map(exported_run):
    sets, tmp, ckpt = exported_run
    onnx_path = ckpt.with_suffix(".onnx")
    assert onnx_path.is_file() and ckpt.with_suffix(".torchscript").is_file()
    pictures = sorted((tmp / "sets" / "coco" / "val").iterdir())
    from tinyssd.deploy.prediction import predict_files

    outputs = {}
    for key, model in (("ckpt", ckpt), ("onnx", onnx_path)):  # what predict.py writes as detections.json
        entries, errors = predict_files(Detector.load(model, threshold=0.0), pictures, tmp / f"predict_{key}")
        assert not errors
        outputs[key] = json.loads(json.dumps(entries))
    ckpt_images, onnx_images = outputs["ckpt"], outputs["onnx"]
    assert [(i["path"], i["width"], i["height"]) for i in ckpt_images] == [
        (i["path"], i["width"], i["height"]) for i in onnx_images
    ]
    for a, b in zip(onnx_images, ckpt_images, strict=True):
        assert b["detections"]
        assert_same_json_detections(a["detections"], b["detections"])

    from tinyssd.pipeline.evaluation import evaluate

    maps = {}
    for key, model in (("ckpt", ckpt), ("onnx", onnx_path)):
        cfg = compose_train(
            [f"ckpt_path={model}", *sets["coco"], "trainer.precision=32", "logger=none", "threshold=0.05"],
            tmp / f"eval_{key}",
            config_name="eval",
        )
        maps[key] = evaluate(cfg)
    for metric in ("map", "map_50", "map_75", "mar_100", "precision", "recall"):
        assert maps["onnx"][metric] == pytest.approx(maps["ckpt"][metric], abs=1e-6), metric
    assert maps["onnx"]["confusion_matrix"] == maps["ckpt"]["confusion_matrix"]
    assert maps["onnx"]["images"] == maps["ckpt"]["images"] > 0


@pytest.mark.slow
def test_export_quantize_int8_calibrates_on_train_and_reports_both_val_maps(exported_run, tmp_path):
    from tinyssd.pipeline.exporting import export_from_config

    sets, _, ckpt = exported_run
    cfg = compose_train([f"ckpt_path={ckpt}", "quantize=int8", "calibration=3", *sets["coco"]], config_name="export")
    summary = export_from_config(cfg)
    path = Path(summary["output"])
    assert path.name == "last.int8.onnx" and not path.with_name("last.int8.onnx.tmp").exists()
    quantized = summary["quantization"]
    assert quantized["calibration_pictures"] == 3 and summary["max_difference_vs_pytorch"] <= TOLERANCE
    assert 0 <= quantized["val_map_int8"] <= 1 and 0 <= quantized["val_map_fp32"] <= 1
    # The fp32 mAP is what eval gives the fp32 export on the same split.
    from tinyssd.pipeline.evaluation import evaluate

    fp32 = evaluate(compose_train([f"model={ckpt.with_suffix('.onnx')}", *sets["coco"]], tmp_path / "eval", "eval"))
    assert quantized["val_map_fp32"] == pytest.approx(fp32["map"], abs=1e-4)
    assert OnnxModel(path).metadata == OnnxModel(ckpt.with_suffix(".onnx")).metadata
