"""predict: detect objects in pictures with a trained model, from a composed config (``tinyssd predict``)."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tinyssd.errors import RunInterrupted, printable

__all__ = ["DEFAULT_MODEL", "predict_from_config"]

# What predict runs when no model is given: the model trained with experiment=best that ships in the package.
DEFAULT_MODEL = "banana"


def predict_from_config(cfg: DictConfig) -> int:
    """Run predict for ``cfg`` (conf/predict/predict.yaml); prints a table and returns the exit status
    (0: all done; 1: some files could not be read as pictures, each named)."""
    from tinyssd.deploy.detector import Detector
    from tinyssd.deploy.prediction import (
        check_outputs_free,
        check_predict_options,
        expand_inputs,
        predict_files,
        prepare_output_dir,
        write_report,
    )
    from tinyssd.model.run_files import model_argument, resolve_model_path
    from tinyssd.pipeline.cli import stop_on_sigterm

    source = check_predict_options(cfg)
    model_key, given = model_argument(cfg, "predict", default=DEFAULT_MODEL)
    inputs = expand_inputs(source)
    output_dir = prepare_output_dir(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    check_outputs_free(inputs, output_dir, cfg.get("overwrite", False))
    model = resolve_model_path(given, Path(cfg.paths.log_dir) / "train" / "runs", model_key)
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
            f"predict was stopped by {signal_name} after {len(entries)} of {len(inputs)} image(s); "
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
    return 1 if errors else 0
