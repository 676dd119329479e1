"""Where eager PyTorch inference spends its time at batch 1 and batch 32, per picture.

    python benchmarks/eager_batch.py [--ckpt banana] [--batches 1 32] [--json out.json]

Times, in one process on the same pictures: the network alone in the default (contiguous, NCHW)
memory format and in ``channels_last``, with autograd off; and the decoding after it (softmax,
box decoding, NMS, top-k) alone. Per picture, so a batch that is slower per picture than batch 1
shows which part grows. Run on an otherwise idle machine; compare numbers within one run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from inference import DEFAULT_PICTURES, canvas_pictures, load_module  # noqa: E402


def per_picture_ms(run: Callable[[], object], batch: int, calls: int) -> float:
    """Median milliseconds per picture over ``calls`` calls, after two warm-up calls."""
    for _ in range(2):
        run()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a .ckpt from train.py or a shipped model (banana); default: untrained")
    parser.add_argument("--pictures", type=Path, default=DEFAULT_PICTURES)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    module = load_module(args.ckpt)
    pictures = canvas_pictures(module, args.pictures, max(args.batches))
    rows: dict[str, dict[str, float]] = {}
    for batch in args.batches:
        images = pictures[:batch]
        x = module.prepare_images(images).contiguous()
        formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
        row = {}
        for name, memory_format in formats.items():
            module.net.to(memory_format=memory_format)
            x_in = x.contiguous(memory_format=memory_format)
            row[f"network, {name}"] = per_picture_ms(lambda x_in=x_in: module.net(x_in), batch, args.calls)
        module.net.to(memory_format=torch.channels_last if module.hparams.channels_last else torch.contiguous_format)
        outputs = module.net(module.prepare_images(images))
        row["decoding and NMS"] = per_picture_ms(lambda outputs=outputs: module._decode(*outputs), batch, args.calls)
        row["detect (as Detector runs it)"] = per_picture_ms(
            lambda images=images: module.detect(images), batch, args.calls
        )
        rows[str(batch)] = {k: round(v, 2) for k, v in row.items()}
    names = list(next(iter(rows.values())))
    print(f"{'ms per picture':<32}" + "".join(f"{'batch ' + b:>12}" for b in rows))
    for name in names:
        print(f"{name:<32}" + "".join(f"{rows[b][name]:>12.2f}" for b in rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"torch": torch.__version__, "threads": torch.get_num_threads(), "ms_per_picture": rows}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
