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
    (0: all done, files that are not pictures or videos skipped and counted; 1: some pictures or
    videos could not be decoded, each named)."""
    import json

    from tinyssd.deploy.detector import Detector
    from tinyssd.deploy.outputs import COCO_RESULTS_FILE, OutputOptions, coco_results
    from tinyssd.deploy.prediction import (
        check_outputs_free,
        check_predict_options,
        predict_files,
        predict_videos,
        prepare_output_dir,
        write_report,
    )
    from tinyssd.deploy.sources import expand_inputs
    from tinyssd.files import atomic_write_bytes
    from tinyssd.model.run_files import model_argument, resolve_model_path
    from tinyssd.pipeline.cli import stop_on_sigterm

    source = check_predict_options(cfg)
    model_key, given = model_argument(cfg, "predict", default=DEFAULT_MODEL)
    sources = expand_inputs(source)
    options = OutputOptions(
        **{key: cfg.get(key, False) for key in ("save_txt", "save_conf", "save_crops", "save_coco")},
        vid_stride=cfg.get("vid_stride") or 1,
    )
    output_dir = prepare_output_dir(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    check_outputs_free(sources.images, output_dir, cfg.get("overwrite", False), options, sources.videos)
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
    videos: list[dict] = []
    errors: list[dict] = []
    skipped = [{"path": str(path), "reason": reason} for path, reason in sources.skipped]
    report = {"model": str(Path(model).resolve()), "threshold": cfg.threshold, "complete": False}
    total = len(sources.images) + len(sources.videos)
    try:
        with stop_on_sigterm():
            predict_files(detector, sources.images, output_dir, cfg.batch_size, entries, errors, options)
            predict_videos(detector, sources.videos, output_dir, cfg.batch_size, videos, errors, options)
    except (KeyboardInterrupt, RunInterrupted) as stop:
        # What was finished is kept, marked incomplete; the drawings already written stay.
        signal_name = "SIGTERM" if isinstance(stop, RunInterrupted) else "SIGINT (Ctrl-C)"
        write_report(
            output_dir,
            {
                **report,
                "stopped_by": signal_name,
                "images": entries,
                "videos": videos,
                "errors": errors,
                "skipped": skipped,
            },
        )
        raise RunInterrupted(
            f"predict was stopped by {signal_name} after {len(entries) + len(videos)} of {total} file(s); "
            f'{output_dir / "detections.json"} holds those, marked "complete": false. Run the command again '
            "(with a new output_dir, or overwrite=true) to process them all.",
            exit_code=130 if isinstance(stop, KeyboardInterrupt) else None,
        ) from None
    if options.save_coco:
        annotations = Path(cfg.coco_annotations) if cfg.get("coco_annotations") else None
        results = coco_results(entries, detector.class_names, annotations)
        atomic_write_bytes(output_dir / COCO_RESULTS_FILE, json.dumps(results).encode(), "the COCO results")
    write_report(
        output_dir,
        {**report, "complete": True, "images": entries, "videos": videos, "errors": errors, "skipped": skipped},
    )
    print_summary(entries, videos, errors, skipped, output_dir)
    return 1 if errors else 0


# Pictures whose detections are listed one by one in the console; beyond, a count per picture.
LISTED_DETECTIONS = 10


def _shown(text: str) -> str:  # file names that are not valid UTF-8, and control characters, print escaped
    return printable(text.encode("utf-8", "backslashreplace").decode())


def print_summary(
    entries: list[dict], videos: list[dict], errors: list[dict], skipped: list[dict], output_dir: Path
) -> None:
    """One row per picture (its detections: class and score), per video (frames, detections), then the counts."""
    width = max([len(_shown(Path(e["path"]).name)) for e in entries + videos + errors] + [5])
    print(f"{'file':<{width}}  {'size':>9}  detections")
    for e in entries:
        dets = e["detections"]
        listed = ", ".join(f"{_shown(d['class_name'])} {d['score']:.2f}" for d in dets[:LISTED_DETECTIONS])
        more = f", ... ({len(dets)} in all)" if len(dets) > LISTED_DETECTIONS else ""
        size = f"{e['width']}x{e['height']}"
        print(f"{_shown(Path(e['path']).name):<{width}}  {size:>9}  {len(dets)}{': ' + listed if dets else ''}{more}")
    for v in videos:
        frames = v["frames"]
        count = sum(len(f["detections"]) for f in frames)
        size = f"{frames[0]['width']}x{frames[0]['height']}"
        print(f"{_shown(Path(v['path']).name):<{width}}  {size:>9}  {count} in {len(frames)} frame(s)")
    for e in errors:
        print(f"error: {_shown(e['error'])}", file=sys.stderr)
    if skipped:
        names = ", ".join(_shown(Path(s["path"]).name) for s in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        print(f"skipped {len(skipped)} file(s) that are not pictures or videos ({names}; reasons in detections.json)")
    counts = f"{len(entries)} picture(s)" + (f", {len(videos)} video(s)" if videos else "")
    print(f"{counts}, {len(errors)} failed; annotated files and detections.json in {output_dir}")
