"""Detect objects with a trained TinySSD.

`python predict.py model=PATH input=IMAGE|FOLDER|GLOB [threshold=0.9] [output_dir=DIR]` (the model
a .ckpt from train.py or an .onnx from export.py; ckpt_path=PATH works too) writes an annotated
copy of every image and one detections.json. A file that cannot be read
as a picture is reported by name and skipped; the exit status is then 1 (0: all done; 2: a
user error such as a bad option or checkpoint, nothing processed).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TINYSSD_ROOT", str(Path(__file__).resolve().parent))

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tinyssd.errors import RunInterrupted, printable
from tinyssd.pipeline.cli import report_user_errors, run_hydra_app, stop_on_sigterm


@hydra.main(version_base="1.3", config_path="conf/predict", config_name="predict")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from tinyssd.deploy.detector import Detector
    from tinyssd.deploy.prediction import (
        check_outputs_free,
        check_predict_options,
        expand_inputs,
        predict_files,
        prepare_output_dir,
        write_report,
    )
    from tinyssd.model.run_files import resolve_model_path

    check_predict_options(cfg)
    inputs = expand_inputs(cfg.input)
    output_dir = prepare_output_dir(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    check_outputs_free(inputs, output_dir, cfg.get("overwrite", False))
    model_key = "model" if cfg.model else "ckpt_path"
    model = resolve_model_path(cfg[model_key], Path(cfg.paths.log_dir) / "train" / "runs", model_key)
    detector = Detector.load(
        model,
        runtime=cfg.get("runtime", "auto"),
        device=cfg.device,
        threshold=cfg.threshold,
        nms_threshold=cfg.nms_threshold,
        num_classes=cfg.num_classes,
        image_size=cfg.image_size,
    )
    entries: list[dict] = []
    errors: list[dict] = []
    report = {"model": str(Path(model).resolve()), "threshold": cfg.threshold, "complete": False}
    try:
        with stop_on_sigterm():
            predict_files(detector, inputs, output_dir, batch_size=cfg.batch_size, entries=entries, errors=errors)
    except (KeyboardInterrupt, RunInterrupted) as stop:
        # What was finished is kept, marked incomplete; the drawings already written stay.
        signal_name = "SIGTERM" if isinstance(stop, RunInterrupted) else "SIGINT (Ctrl-C)"
        write_report(output_dir, {**report, "stopped_by": signal_name, "images": entries, "errors": errors})
        raise RunInterrupted(
            f"predict.py was stopped by {signal_name} after {len(entries)} of {len(inputs)} image(s); "
            f'{output_dir / "detections.json"} holds those, marked "complete": false. Run the command again '
            "(with a new output_dir, or overwrite=true) to process them all.",
            exit_code=130 if isinstance(stop, KeyboardInterrupt) else None,
        ) from None
    write_report(output_dir, {**report, "complete": True, "images": entries, "errors": errors})

    def shown(text: str) -> str:  # file names that are not valid UTF-8, and control characters, print escaped
        return printable(text.encode("utf-8", "backslashreplace").decode())

    width = max([len(shown(Path(e["path"]).name)) for e in entries + errors] + [5])
    print(f"{'image':<{width}}  {'size':>9}  detections")
    for e in entries:
        print(f"{shown(Path(e['path']).name):<{width}}  {e['width']:>4}x{e['height']:<4}  {len(e['detections'])}")
    for e in errors:
        print(f"error: {shown(e['error'])}", file=sys.stderr)
    print(f"{len(entries)} image(s), {len(errors)} failed; annotated images and detections.json in {output_dir}")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    run_hydra_app(main, str(Path(__file__).resolve().parent / "conf/predict"))
