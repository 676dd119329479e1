"""``data.cache=ram|none``: peak memory against the number of pictures, and training speed.

    python benchmarks/data_cache.py make --out /tmp/sets          # 1,000- and 20,000-picture sets
    python benchmarks/data_cache.py memory --sets /tmp/sets       # peak memory, cache=none, both sizes
    python benchmarks/data_cache.py speed --data-dir ../shared/data  # images/s, ram vs none + workers

``make`` writes two banana-format data sets (``small``: 1,000 pictures, ``large``: 20,000;
256x256 JPEGs of noise with one to three coloured boxes) with a 100-picture val split each.
``memory`` trains ``--steps`` steps on each with ``cache=none`` (default worker count) in a
fresh process and reports its peak memory: the proportional set size (PSS, shared pages
split between the processes that map them) of the training process plus its loader workers,
sampled every 20 ms, so forked workers are not counted twice. ``speed`` trains the same
steps on the banana set with ``cache=ram`` (no worker) and ``cache=none`` (workers) and
reports images per second over the steps after a warm-up. Run each on an otherwise idle
machine; compare numbers within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from torchvision.io import encode_jpeg

SIZES = {"small": 1_000, "large": 20_000}
VAL_PICTURES = 100
COLOURS = [(255, 220, 0), (0, 120, 255), (220, 0, 60)]


def make_split(folder: Path, pictures: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = ["img_name,label,xmin,ymin,xmax,ymax"]
    for i in range(pictures):
        image = (torch.rand(3, 256, 256, generator=gen) * 120).to(torch.uint8)
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            w, h = (int(v) for v in torch.randint(30, 100, (2,), generator=gen))
            x, y = (int(v) for v in torch.randint(0, 256 - 100, (2,), generator=gen))
            cls = int(torch.randint(0, 3, (1,), generator=gen))
            image[:, y : y + h, x : x + w] = torch.tensor(COLOURS[cls], dtype=torch.uint8)[:, None, None]
            rows.append(f"{i}.jpg,{cls},{x},{y},{x + w},{y + h}")
        (folder / "images" / f"{i}.jpg").write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
    (folder / "label.csv").write_text("\n".join(rows) + "\n")


def make(out: Path, sizes: dict[str, int]) -> None:
    for name, pictures in sizes.items():
        root = out / name / "banana-detection"
        start = time.perf_counter()
        make_split(root / "bananas_train", pictures, seed=1)
        make_split(root / "bananas_val", VAL_PICTURES, seed=2)
        print(f"{name}: {pictures} pictures in {root} ({time.perf_counter() - start:.0f} s)", flush=True)


# ----------------------------------------------------------------------------- measuring


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except OSError:
            pass
    return out


class PeakMemory:
    """Samples the PSS of this process and its descendants; ``peak_mib`` is the largest sum."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s, self.peak_kib, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        root = os.getpid()
        while not self._stop.is_set():
            pids, stack = [], [root]
            while stack:
                pid = stack.pop()
                pids.append(pid)
                stack += _children(pid)
            self.peak_kib = max(self.peak_kib, sum(_pss_kib(p) for p in pids))
            time.sleep(self.every_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


def train_steps(data_dir: str, cache: str, steps: int, warmup: int, num_classes: int) -> dict:
    """Train ``steps`` steps (chapter recipe, batch 32); images/s after ``warmup`` steps, peak memory."""
    import lightning.pytorch as pl

    from tinyssd import BananaDataModule, TinySSDModule

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.start = self.end = 0.0

        def on_train_batch_start(self, trainer, *args) -> None:
            if trainer.global_step == warmup:
                self.start = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            self.end = time.perf_counter()

    torch.manual_seed(0)
    clock = Clock()
    with PeakMemory() as memory:
        datamodule = BananaDataModule(
            data_dir=data_dir, num_classes=num_classes, class_names=None, download=False, cache=cache
        )
        module = TinySSDModule(net={"_target_": "tinyssd.model.net.TinySSD", "num_classes": datamodule.num_classes})
        trainer = pl.Trainer(
            max_steps=steps,  # over as many epochs as a small set needs
            max_epochs=-1,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            callbacks=[clock],
        )
        trainer.fit(module, datamodule=datamodule)
    images = (steps - warmup) * datamodule.batch_size
    return {
        "cache": cache,
        "workers": datamodule.num_workers,
        "pictures": len(datamodule.datasets["train"]),
        "peak_mib": round(memory.peak_mib, 1),
        "images_per_s": round(images / (clock.end - clock.start), 2),
    }


def _in_fresh_process(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "_one", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(sets: Path, steps: int) -> None:
    warmup = str(min(5, steps - 1))
    results = {name: _in_fresh_process([str(sets / name), "none", str(steps), warmup, "3"]) for name in SIZES}
    for name, r in results.items():
        print(
            f"cache=none {name:>5}: {r['pictures']:>6} pictures, {r['workers']} worker(s), peak {r['peak_mib']:.0f} MiB"
        )
    ratio = results["large"]["peak_mib"] / results["small"]["peak_mib"]
    sizes = " / ".join(f"{results[n]['pictures']:,}" for n in ("large", "small"))
    print(f"peak memory, {sizes} pictures: {ratio:.3f}x (bar: <= 1.2x)")


def speed(data_dir: str, steps: int, repeats: int) -> None:
    runs: dict[str, list[float]] = {"ram": [], "none": []}
    for _ in range(repeats):  # interleaved, so machine noise falls on both
        for cache in runs:
            r = _in_fresh_process([data_dir, cache, str(steps), str(min(5, steps - 1)), "1"])
            runs[cache].append(r["images_per_s"])
            print(f"cache={cache:<4} workers={r['workers']}: {r['images_per_s']:.1f} images/s", flush=True)
    ram, none = (max(v) for v in runs.values())
    print(f"best of {repeats}: ram {ram:.1f}, none {none:.1f} images/s; none/ram = {none / ram:.3f} (bar: >= 0.85)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--small", type=int, default=SIZES["small"], help="pictures of the small set")
    p.add_argument("--large", type=int, default=SIZES["large"], help="pictures of the large set")
    p = sub.add_parser("memory")
    p.add_argument("--sets", type=Path, required=True)
    p.add_argument("--steps", type=int, default=40)
    p = sub.add_parser("speed")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p = sub.add_parser("_one")  # one measurement, in a fresh process
    p.add_argument("data_dir")
    p.add_argument("cache")
    p.add_argument("steps", type=int)
    p.add_argument("warmup", type=int)
    p.add_argument("num_classes", type=int)
    args = parser.parse_args()
    if args.command == "make":
        make(args.out, {"small": args.small, "large": args.large})
    elif args.command == "memory":
        memory(args.sets, args.steps)
    elif args.command == "speed":
        speed(args.data_dir, args.steps, args.repeats)
    else:
        print(json.dumps(train_steps(args.data_dir, args.cache, args.steps, args.warmup, args.num_classes)))


if __name__ == "__main__":
    main()
