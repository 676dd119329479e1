"""Inference speed of one checkpoint across runtimes: PyTorch eager, torch.compile, torch.export,
TorchScript, ONNX Runtime (float32 and INT8) and OpenVINO (when installed), in one process, on the
same pictures.

    python benchmarks/inference.py --ckpt best.ckpt [--pictures DIR] [--batches 1 32] [--json out.json]

Each runtime detects on the same pictures, already placed on the model's input (uint8
``(B, 3, S, S)``), and returns per-image detections after NMS, so every row measures the
same work: network, softmax, box decoding, NMS and top-k. Reported per batch size: images/s,
the latency of one call (p50, p99), and per runtime how long it takes to be ready (load,
export or compile, first call), and whether its detections equal eager PyTorch's (1e-4; INT8 is
approximate by design: ``export.py quantize=int8`` reports the val mAP it keeps). INT8 is calibrated
on ``--calibration`` pictures (default: 128 of the banana training split). Without
``--ckpt`` an untrained TinySSD is timed (random heads give ~100 detections per picture: NMS
then costs more than with a trained model). Run on an otherwise idle machine; compare numbers
within one run only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tinyssd.deploy.export import export_model  # noqa: E402
from tinyssd.deploy.graph import DetectionGraph, detection_difference, graph_detections  # noqa: E402
from tinyssd.images import IMAGE_SUFFIXES, read_image  # noqa: E402
from tinyssd.model.module import TinySSDModule  # noqa: E402
from tinyssd.resize import to_canvas_image  # noqa: E402

Detect = Callable[[torch.Tensor], list[dict[str, torch.Tensor]]]
DEFAULT_PICTURES = ROOT.parent / "shared" / "data" / "banana-detection" / "bananas_val" / "images"
DEFAULT_CALIBRATION = ROOT.parent / "shared" / "data" / "banana-detection" / "bananas_train" / "images"


def load_module(ckpt: str | None) -> TinySSDModule:
    if ckpt:
        from tinyssd.model.checkpoints import load_module as load
        from tinyssd.model.run_files import shipped_model

        return load(shipped_model(ckpt) or ckpt).eval()
    torch.manual_seed(0)
    return TinySSDModule().eval()


def canvas_pictures(module: TinySSDModule, folder: Path, count: int) -> torch.Tensor:
    """``count`` pictures of ``folder`` on the model's input (cycled if fewer); noise if none."""
    size, mode = int(module.hparams.image_size), str(module.hparams.get("resize", "stretch"))
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        print(f"no pictures in {folder}: timing on noise", flush=True)
        return torch.randint(0, 255, (count, 3, size, size), dtype=torch.uint8)
    return torch.stack([to_canvas_image(read_image(files[i % len(files)]), size, mode) for i in range(count)])


def runtimes(module: TinySSDModule, workdir: Path, calibration: Path) -> dict[str, Callable[[], Detect]]:
    """Name -> a function that makes the runtime ready (timed as its load) and returns its detect."""

    def onnx_file() -> Path:
        """The float32 ONNX export, written once for the runtimes that read it."""
        path = workdir / "model.onnx"
        if not path.exists():
            export_model(module, path)
        return path

    def eager() -> Detect:
        return module.detect

    def compiled() -> Detect:
        graph = torch.compile(DetectionGraph(module).eval(), dynamic=False)
        return lambda images: graph_detections(graph(images))

    def torchscript() -> Detect:
        path, _ = export_model(module, workdir / "model.torchscript", "torchscript")
        scripted = torch.jit.load(str(path))
        return lambda images: graph_detections(scripted(images))

    def torch_export() -> Detect:
        path, _ = export_model(module, workdir / "model.pt2", "torch_export")
        program = torch.export.load(path).module()  # its NMS operator: tinyssd.deploy.graph, imported above
        return lambda images: graph_detections(program(images))

    def onnxruntime() -> Detect:
        from tinyssd.deploy.onnx_runtime import OnnxModel

        path = onnx_file()
        return OnnxModel(path).detect

    def onnxruntime_int8() -> Detect:
        from tinyssd.deploy.onnx_runtime import OnnxModel
        from tinyssd.deploy.quantize import quantize_onnx

        path = onnx_file()
        quantize_onnx(path, workdir / "model.int8.onnx", canvas_pictures(module, calibration, 128))
        return OnnxModel(workdir / "model.int8.onnx").detect

    def openvino() -> Detect:
        import openvino as ov

        path = onnx_file()
        # f32: on CPUs with bf16 OpenVINO otherwise computes in bf16 (scores then differ in the 3rd digit).
        compiled_model = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled_model.create_infer_request()

        def detect(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            out = request.infer({"images": images.numpy()})
            return graph_detections(tuple(torch.from_numpy(out[o].copy()) for o in compiled_model.outputs))

        return detect

    found = {
        "pytorch eager": eager,
        "torch.compile": compiled,
        "torch.export": torch_export,
        "torchscript": torchscript,
    }
    found["onnxruntime"] = onnxruntime
    found["onnxruntime int8"] = onnxruntime_int8
    if importlib.util.find_spec("openvino") is not None:
        found["openvino"] = openvino
    else:
        print("openvino is not installed: its row is left out (pip install openvino)", flush=True)
    return found


def time_calls(detect: Detect, images: torch.Tensor, calls: int, seconds: float) -> list[float]:
    """Seconds per call, after three warm-up calls; at least 5 calls, then until ``calls`` or ``seconds``."""
    for _ in range(3):
        detect(images)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (len(times) < calls and time.perf_counter() - start < seconds):
        begin = time.perf_counter()
        detect(images)
        times.append(time.perf_counter() - begin)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ckpt", help="a .ckpt from train.py or a shipped model (banana); default: an untrained TinySSD"
    )
    parser.add_argument("--pictures", type=Path, default=DEFAULT_PICTURES, help="folder of pictures")
    parser.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION, help="INT8 calibration pictures")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per runtime and batch (at most)")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per runtime and batch (at most)")
    parser.add_argument("--only", nargs="+", help="runtimes to time (default: all available)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    module = load_module(args.ckpt)
    pictures = canvas_pictures(module, args.pictures, max(args.batches))
    results: dict = {
        "checkpoint": args.ckpt,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "image_size": int(module.hparams.image_size),
        "runtimes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        available = runtimes(module, Path(tmp), args.calibration)
        names = [n for n in available if not args.only or n in args.only]
        reference = {b: module.detect(pictures[:b]) for b in args.batches}
        for name in names:
            start = time.perf_counter()
            detect = available[name]()
            detect(pictures[:1])  # the first call (compilation, graph optimisation) is part of being ready
            ready = time.perf_counter() - start
            row: dict = {"ready_s": round(ready, 3), "batches": {}}
            for batch in args.batches:
                images = pictures[:batch]
                difference = detection_difference(reference[batch], detect(images))
                times = time_calls(detect, images, args.calls, args.seconds)
                row["batches"][str(batch)] = {
                    "images_per_s": round(batch * len(times) / sum(times), 1),
                    "p50_ms": round(1000 * statistics.median(times), 2),
                    "p99_ms": round(1000 * percentile(times, 99), 2),
                    "calls": len(times),
                    "max_difference_vs_eager": difference,
                }
            results["runtimes"][name] = row
            print(f"{name}: ready in {ready:.2f} s", flush=True)

    eager = results["runtimes"].get("pytorch eager", {}).get("batches", {})
    header = f"{'runtime':<17}{'ready s':>9}" + "".join(
        f"{f'b={b} img/s':>13}{'p50 ms':>9}{'p99 ms':>9}{'x eager':>9}" for b in args.batches
    )
    print("\n" + header)
    for name, row in results["runtimes"].items():
        line = f"{name:<17}{row['ready_s']:>9.2f}"
        for b in args.batches:
            cell = row["batches"][str(b)]
            speedup = cell["images_per_s"] / eager[str(b)]["images_per_s"] if str(b) in eager else float("nan")
            cell["speedup_vs_eager"] = round(speedup, 2)
            line += f"{cell['images_per_s']:>13.1f}{cell['p50_ms']:>9.2f}{cell['p99_ms']:>9.2f}{speedup:>9.2f}"
        print(line)
    differs = [
        f"{n} (batch {b})"
        for n, row in results["runtimes"].items()
        for b, cell in row["batches"].items()
        if not cell["max_difference_vs_eager"] <= 1e-4 and "int8" not in n
    ]
    print(
        "detections equal eager PyTorch's (1e-4):",
        "all but INT8 (approximate by design)" if not differs else f"NOT {', '.join(differs)}",
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written: {args.json}")


if __name__ == "__main__":
    main()
