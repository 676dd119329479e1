"""Shared fixtures: small banana-format datasets written to a temporary folder."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torchvision.io import write_png

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: N workers share the cores; one thread each (and in the processes they start)
    # instead of every worker's torch spreading over all of them.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
SHARED_DATA = ROOT.parent / "shared" / "data"

# Colours of the synthetic objects, one per class.
CLASS_COLOURS = [(255, 220, 0), (0, 120, 255), (220, 0, 60)]


def write_banana_split(
    split_dir: Path,
    num_images: int,
    objects_per_image: int | Sequence[int] = 1,
    image_size: tuple[int, int] = (64, 64),
    num_classes: int = 1,
    seed: int = 0,
) -> list[list[tuple[int, int, int, int, int]]]:
    """Write ``images/*.png`` and ``label.csv`` with coloured boxes on noise; return the boxes.

    Each object is a filled rectangle in its class colour; boxes do not overlap much.
    """
    gen = torch.Generator().manual_seed(seed)
    height, width = image_size
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    all_boxes = []
    with open(split_dir / "label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img_name", "label", "xmin", "ymin", "xmax", "ymax"])
        for i in range(num_images):
            count = objects_per_image if isinstance(objects_per_image, int) else objects_per_image[i]
            img = (torch.rand(3, height, width, generator=gen) * 80).to(torch.uint8)
            boxes = []
            for k in range(count):
                # Objects sit in separate vertical bands so they never overlap.
                band = width // max(count, 1)
                bw = int(band * 0.6)
                bh = int(height * (0.3 + 0.3 * torch.rand(1, generator=gen).item()))
                x1 = k * band + int((band - bw) * torch.rand(1, generator=gen).item())
                y1 = int((height - bh) * torch.rand(1, generator=gen).item())
                cls = int(torch.randint(num_classes, (1,), generator=gen))
                colour = torch.tensor(CLASS_COLOURS[cls], dtype=torch.uint8)[:, None, None]
                img[:, y1 : y1 + bh, x1 : x1 + bw] = colour
                boxes.append((cls, x1, y1, x1 + bw, y1 + bh))
                writer.writerow([f"{i}.png", cls, x1, y1, x1 + bw, y1 + bh])
            write_png(img, str(split_dir / "images" / f"{i}.png"))
            all_boxes.append(boxes)
    return all_boxes


def write_banana_dataset(
    data_dir: Path,
    num_train: int = 8,
    num_val: int = 4,
    objects_per_image: int = 1,
    image_size: tuple[int, int] = (64, 64),
    num_classes: int = 1,
) -> Path:
    """A data_dir holding ``banana-detection/{bananas_train,bananas_val}``."""
    root = data_dir / "banana-detection"
    write_banana_split(root / "bananas_train", num_train, objects_per_image, image_size, num_classes, seed=1)
    write_banana_split(root / "bananas_val", num_val, objects_per_image, image_size, num_classes, seed=2)
    return data_dir


@pytest.fixture
def make_banana_dir(tmp_path: Path) -> Callable[..., Path]:
    """Factory over :func:`write_banana_dataset` in the test's temporary folder."""

    def make(name: str = "data", **kwargs) -> Path:
        return write_banana_dataset(tmp_path / name, **kwargs)

    return make


# Small, quiet runs on the 64x64 synthetic data.
TINY_ARGS = ["data.image_size=64", "data.batch_size=4", "callbacks.progress_bar.refresh_rate=0"]


def train_tiny(tmp: Path, *overrides: str, num_train: int = 8, num_val: int = 4):
    """Train on a fresh tiny dataset under ``tmp``; returns (run folder, CompletedProcess)."""
    data_dir = write_banana_dataset(tmp / "data", num_train, num_val)
    result = run_train([f"data.data_dir={data_dir}", f"paths.log_dir={tmp / 'logs'}", *TINY_ARGS, *overrides])
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = list((tmp / "logs" / "train" / "runs").iterdir())
    return run, result


def real_data_dir() -> Path | None:
    """The real banana data: $TINYSSD_REAL_DATA, else ../shared/data beside the project."""
    env = os.environ.get("TINYSSD_REAL_DATA")
    candidate = Path(env) if env else SHARED_DATA
    return candidate if (candidate / "banana-detection" / "bananas_val" / "label.csv").is_file() else None


# The entry points, run in this process by default (see :func:`run_in_process`).
ENTRY_POINTS = ("train.py", "predict.py", "eval.py", "export.py")


def run_script(
    script: str,
    args: list[str],
    cwd: Path = ROOT,
    timeout: int = 600,
    env: dict | None = None,
    real_process: bool = False,
):
    """Run one of the project's scripts with a command line, as a user does; a CompletedProcess.

    The entry points run in this process (:func:`run_in_process`: the same script, command-line
    parsing, exit status and output, without paying torch's and Lightning's imports again);
    ``real_process=True``, or any other script, starts ``python SCRIPT`` instead.
    """
    env = {"TINYSSD_ROOT": str(scratch_root()), **(env or {})}
    if script in ENTRY_POINTS and not real_process:
        return run_in_process(script, args, cwd=cwd, env=env)
    import subprocess

    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


_last_start = [0]
_scratch: list[Path] = []


def scratch_root() -> Path:
    """The project root the scripts see in tests (``TINYSSD_ROOT``): a temporary folder, so runs
    that leave ``paths.log_dir`` at its default write their ``logs/`` there, not into the checkout."""
    if not _scratch:
        import tempfile

        _scratch.append(Path(tempfile.mkdtemp(prefix="tinyssd-tests-")))
    return _scratch[0]


# The warning filters of a fresh interpreter (pytest changes them inside each test).
_PROCESS_WARNING_FILTERS = list(__import__("warnings").filters)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    import warnings

    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_in_process(script: str, args: list[str], cwd: Path = ROOT, env: dict | None = None):
    """``python SCRIPT ARGS`` without a new interpreter: ``runpy`` runs the script as ``__main__``
    with ``sys.argv``, the working directory and the environment set, and restores them after.

    Returns a CompletedProcess: the exit status (``SystemExit``'s code; an uncaught exception
    prints its traceback and gives 1, as Python does) and what went to stdout and stderr,
    Hydra's log lines included (its console handler is made while they are redirected).
    """
    import contextlib
    import io
    import logging
    import runpy
    import subprocess
    import time
    import traceback
    import warnings

    from hydra.core.global_hydra import GlobalHydra

    import tinyssd.pipeline.cli

    # Hydra names run folders by the second: two runs never start within the same one.
    while int(time.time()) == _last_start[0]:
        time.sleep(0.02)
    _last_start[0] = int(time.time())
    argv = [str(ROOT / script), *args]
    saved = (sys.argv, os.getcwd(), dict(os.environ), torch.get_num_threads(), torch.is_grad_enabled())
    root = logging.getLogger()
    saved_logging = (root.handlers[:], root.level, logging.getLogger("tinyssd").handlers[:])
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.chdir(cwd)
        os.environ.update(env or {})
        sys.argv = argv
        torch.set_grad_enabled(True)  # as in a fresh interpreter
        tinyssd.pipeline.cli._task_started = tinyssd.pipeline.cli._reported = False
        GlobalHydra.instance().clear()
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            # Warnings go to stderr under a fresh interpreter's filters, not to pytest's record.
            warnings.filters[:] = _PROCESS_WARNING_FILTERS
            warnings.showwarning = _print_warning
            try:
                runpy.run_path(argv[0], run_name="__main__")
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
                if not isinstance(done.code, (int, type(None))):
                    print(done.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv, cwd_before, environ, threads, grad_enabled = saved
        torch.set_grad_enabled(grad_enabled)
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        GlobalHydra.instance().clear()
        root_handlers, level, tinyssd_handlers = saved_logging
        root.handlers[:] = root_handlers
        root.setLevel(level)
        logging.getLogger("tinyssd").handlers[:] = tinyssd_handlers
    return subprocess.CompletedProcess(["python", *argv], code, out.getvalue(), err.getvalue())


def run_train(args: list[str], **kwargs):
    """``train.py`` with a command line (see :func:`run_script`)."""
    return run_script("train.py", args, **kwargs)


def run_predict(args: list[str], **kwargs):
    """``predict.py`` with a command line (see :func:`run_script`)."""
    return run_script("predict.py", args, **kwargs)


CONF = ROOT / "conf"


def compose_train(overrides: Sequence[str] = (), output_dir: Path | None = None, config_name: str = "train"):
    """The composed ``train.yaml`` (or ``eval.yaml``) as the script would get it (``paths.output_dir`` given)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


@pytest.fixture
def train_in_process(tmp_path: Path):
    """``train(cfg)`` in this process on a tiny dataset; each call gets a fresh run folder.

    Returns ``(metrics, run folder)``; the run folder is where Hydra would have put the run
    (``logs/train/runs/<n>``); a resumed run may continue elsewhere.
    """
    from tinyssd.pipeline.training import train

    data_dir = write_banana_dataset(tmp_path / "data", 8, 4)
    calls = {"n": 0}

    def run(*overrides: str, data: Path | None = None):
        calls["n"] += 1
        run_dir = tmp_path / "logs" / "train" / "runs" / f"run{calls['n']}"
        # Another data format (data=coco ...) brings its own locations in the overrides.
        where = [] if any(o.startswith("data=") for o in overrides) else [f"data.data_dir={data or data_dir}"]
        cfg = compose_train([*where, *TINY_ARGS, "trainer.accelerator=cpu", *overrides], run_dir)
        return train(cfg), run_dir

    return run


# Fixtures that train for real (a train.py subprocess or an in-process run): tests using them
# are `slow`, so `pytest -m "not slow"` is the quick inner loop (unit tests only).
TRAINING_FIXTURES = {"trained_ckpt", "short_run", "workspace", "train_in_process", "coco_run"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def quiet_trainer(root: Path, callbacks: list, max_epochs: int, **kwargs):
    """A bare CPU Lightning Trainer (no logger, no progress bar) for tests of single callbacks."""
    import lightning.pytorch as pl

    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
        **kwargs,
    )


# ----------------------------------------------------------------------------- four formats

# (width, height) and objects (class, x1, y1, x2, y2 in pixels) of a small three-class set:
# non-square pictures, several objects, pictures with none. Sides are powers of two and corners
# whole pixels, so every format's numbers are exact and all four give identical tensors.
FORMAT_CLASSES = ["banana", "blue", "red"]
FORMAT_PICTURES: list[tuple[tuple[int, int], list[tuple[int, int, int, int, int]]]] = [
    ((64, 64), [(0, 4, 6, 30, 40)]),
    ((128, 64), [(1, 10, 8, 50, 60), (2, 70, 4, 120, 30)]),
    ((64, 128), []),
    ((64, 32), [(2, 0, 0, 64, 32)]),
    ((128, 128), [(0, 8, 8, 40, 40), (1, 60, 60, 100, 120), (1, 100, 4, 124, 30)]),
    ((32, 64), []),
]


def _picture(size: tuple[int, int], objects, seed: int) -> torch.Tensor:
    width, height = size
    gen = torch.Generator().manual_seed(seed)
    img = (torch.rand(3, height, width, generator=gen) * 80).to(torch.uint8)
    for cls, x1, y1, x2, y2 in objects:
        img[:, y1:y2, x1:x2] = torch.tensor(CLASS_COLOURS[cls], dtype=torch.uint8)[:, None, None]
    return img


def write_all_formats(root: Path, pictures=FORMAT_PICTURES, class_names=FORMAT_CLASSES, coco_ids=None) -> dict:
    """The same pictures (identical PNG bytes) as banana CSV, COCO, VOC and YOLO data sets under ``root``.

    Every split (train, val, test) holds all ``pictures``. Returns the overrides that select
    each format: ``{"banana": [...], "coco": [...], "voc": [...], "yolo": [...]}``.
    ``coco_ids``: the COCO category id of each class (default 1..C).
    """
    import json

    coco_ids = coco_ids or list(range(1, len(class_names) + 1))
    for split in ("train", "val", "test"):
        banana = root / "banana" / "banana-detection" / f"bananas_{split}"
        (banana / "images").mkdir(parents=True)
        (root / "coco" / split).mkdir(parents=True)
        (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (root / "voc" / sub).mkdir(parents=True, exist_ok=True)
        (root / "yolo" / "images" / split).mkdir(parents=True)
        (root / "yolo" / "labels" / split).mkdir(parents=True)
        rows = ["img_name,label,xmin,ymin,xmax,ymax"]
        coco = {
            "images": [],
            "annotations": [],
            "categories": [{"id": i, "name": n} for i, n in zip(coco_ids, class_names, strict=True)],
        }
        ids = []
        for k, ((width, height), objects) in enumerate(pictures):
            name = f"{split}_{k}"
            png = root / "coco" / split / f"{name}.png"
            write_png(_picture((width, height), objects, seed=k), str(png))
            data = png.read_bytes()
            for target in (
                root / "voc" / "JPEGImages" / f"{name}.jpg",
                root / "yolo" / "images" / split / f"{name}.png",
            ):
                target.write_bytes(data)  # PNG bytes; VOC's fixed .jpg name is only a name
            if objects:
                (banana / "images" / f"{name}.png").write_bytes(data)
            coco["images"].append({"id": 100 + k, "file_name": f"{name}.png", "width": width, "height": height})
            xml = [
                f"<annotation><filename>{name}.jpg</filename>",
                f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
            ]
            yolo = []
            for j, (cls, x1, y1, x2, y2) in enumerate(objects):
                rows.append(f"{name}.png,{cls},{x1},{y1},{x2},{y2}")
                coco["annotations"].append(
                    {
                        "id": 1000 * k + j,
                        "image_id": 100 + k,
                        "category_id": coco_ids[cls],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
                xml.append(
                    f"<object><name>{class_names[cls]}</name><difficult>0</difficult><bndbox>"
                    f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                )
                cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
                yolo.append(f"{cls} {cx!r} {cy!r} {(x2 - x1) / width!r} {(y2 - y1) / height!r}")
            (root / "voc" / "Annotations" / f"{name}.xml").write_text("".join(xml) + "</annotation>")
            (root / "yolo" / "labels" / split / f"{name}.txt").write_text("\n".join(yolo) + ("\n" if yolo else ""))
            ids.append(name)
        (banana / "label.csv").write_text("\n".join(rows) + "\n")
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        (root / "voc" / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(class_names))
    (root / "yolo" / "data.yaml").write_text(
        f"train: images/train\nval: images/val\ntest: images/test\nnames:\n{names}\n"
    )
    coco_args = [
        f"data.{s}.{k}={root / 'coco' / (s if k == 'images' else f'annotations/instances_{s}.json')}"
        for s in ("train", "val", "test")
        for k in ("images", "annotations")
    ]
    return {
        "banana": [
            "data=banana",
            f"data.data_dir={root / 'banana'}",
            f"data.num_classes={len(class_names)}",
            f"data.class_names=[{','.join(class_names)}]",
            "data.test_split=bananas_test",
        ],
        "coco": ["data=coco", *coco_args],
        "voc": ["data=voc", f"data.root={root / 'voc'}", "data.test.split=test"],
        "yolo": ["data=yolo", f"data.yaml={root / 'yolo' / 'data.yaml'}"],
    }


class WeightsAtStart:
    """A Lightning callback for tests (``+callbacks.probe._target_=conftest.WeightsAtStart``):
    records the network's weights when training starts, before the first optimizer step."""

    seen: ClassVar[dict[str, torch.Tensor]] = {}

    def __new__(cls):
        import lightning.pytorch as pl

        class Probe(pl.Callback):
            def on_train_start(self, trainer, pl_module):
                WeightsAtStart.seen = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}

        return Probe()
