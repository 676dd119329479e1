"""Training-speed benchmark: one process, one machine, one batch size.

    python benchmarks/train_step.py [--batch-size 32] [--steps 15] [--warmup 3] [--json out.json]

Measures images/s of
  (a) the model's own forward + backward + SGD step on tensors already in memory, in the
      default configuration (channels_last, precision auto) - the bound;
  (b) the project's full training step as Lightning runs it (data loader -> anchor labeling
      -> loss -> backward -> step), default configuration;
  (c) a plain reference loop written the chapter's way (fp32, per-image target assignment,
      images as float tensors);
  (d) inference (forward + detection decoding), default configuration;
  (e) the experiment=best training step through Lightning with its augmentation (colour, flip,
      zoom-out 1.5, mosaic 0.5) read from a real data module, once per placement
      (data.augment_on=loader: per picture in the data set; device: per batch after the transfer),
      beside the same step without augmentation (e0) and that recipe's own model-step bound (a_best);
  (f) the data path alone: pictures/s the loader plus augmentation deliver with no model, per
      placement, on one thread (per core);
and prints a table, the ratios b/a, b/c, e/a_best and e/e0, and JSON. Data are synthetic
banana-sized images (256x256, one box each; written as PNG files for (e) and (f)), so no dataset
is needed.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchvision.io import write_png

from tinyssd import BananaDataModule, MultiBoxLoss, TinySSD, TinySSDModule, multibox_target
from tinyssd.data.formats.banana import DetectionSplit
from tinyssd.pipeline.builders import build_module, resolve_precision

CONF = Path(__file__).resolve().parents[1] / "src" / "tinyssd" / "conf"


def synthetic_split(num: int, size: int = 256, seed: int = 0) -> DetectionSplit:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num, 3, size, size), dtype=torch.uint8, generator=gen)
    xy = torch.rand(num, 2, generator=gen) * 0.7
    wh = 0.1 + torch.rand(num, 2, generator=gen) * 0.2
    labels = torch.cat([torch.zeros(num, 1), xy, xy + wh], dim=1)[:, None, :]
    return DetectionSplit(images, labels, [f"{i}.png" for i in range(num)])


def autocast_for(precision: str, device: torch.device):
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_bound(split, batch_size, steps, warmup, precision, device) -> float:
    """(a) forward + backward + step on a batch already in memory (targets precomputed)."""
    net = TinySSD().to(device).to(memory_format=torch.channels_last)
    loss_fn = MultiBoxLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.2, weight_decay=5e-4)
    # Pixels in [0, 255], as the module feeds them (input_scale=255, the chapter).
    x = split.images[:batch_size].float().to(device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        anchors, _, _ = net(x)
    targets = multibox_target(anchors, split.labels[:batch_size].to(device))
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast_for(precision, device):
            _, cls_preds, bbox_preds = net(x)
        loss = loss_fn(cls_preds, targets[2], bbox_preds, targets[0], targets[1])["loss"]
        loss.backward()
        opt.step()
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


class StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.count = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self.warmup:
            self.count += batch[0].shape[0]
            sync(pl_module.device)
            self.end = time.perf_counter()


def timed_trainer(accelerator: str, precision: str, max_steps: int, timer: StepTimer) -> pl.Trainer:
    """A bare one-device Lightning Trainer that only trains and times its steps."""
    return pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )


def bench_lightning(split, batch_size, steps, warmup, precision, accelerator) -> float:
    """(b) the full training step through Lightning, default configuration."""
    module = TinySSDModule()
    loader = torch.utils.data.DataLoader(
        # Decoded uint8 images in memory: what cache=ram serves.
        torch.utils.data.TensorDataset(split.images, split.labels),
        batch_size=batch_size,
        shuffle=True,
        pin_memory=accelerator == "cuda",
    )
    timer = StepTimer(warmup)
    trainer = timed_trainer(accelerator, precision, warmup + steps, timer)
    trainer.fit(module, train_dataloaders=loader)
    return timer.count / (timer.end - timer.start)


def chapter_calc_loss(cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks):
    b, _, c = cls_preds.shape
    cls = F.cross_entropy(cls_preds.reshape(-1, c), cls_labels.reshape(-1), reduction="none").reshape(b, -1).mean(1)
    bbox = F.l1_loss(bbox_preds * bbox_masks, bbox_labels * bbox_masks, reduction="none").mean(1)
    return cls + bbox


def bench_reference(split, batch_size, steps, warmup, device) -> float:
    """(c) the chapter's loop: fp32, float images, targets assigned image by image."""
    net = TinySSD().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.2, weight_decay=5e-4)
    features = split.images.float()  # the chapter keeps images as float tensors
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, split.labels), batch_size=batch_size, shuffle=True
    )
    done, start = 0, 0.0
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                sync(device)
                start = time.perf_counter()
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            anchors, cls_preds, bbox_preds = net(x)
            per_image = [multibox_target(anchors, y[i : i + 1]) for i in range(x.shape[0])]
            bbox_labels, bbox_masks, cls_labels = (torch.cat(t) for t in zip(*per_image, strict=True))
            chapter_calc_loss(cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks).mean().backward()
            opt.step()
            done += 1
            if done == warmup + steps:
                break
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


@torch.no_grad()
def bench_inference(split, batch_size, steps, warmup, precision, device) -> float:
    """(d) forward + detection decoding (per-image boxes), default configuration."""
    module = TinySSDModule().to(device).eval()
    x = split.images[:batch_size].to(device)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        with autocast_for(precision, device):
            module.detect(x)
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def write_split(split: DetectionSplit, root: Path) -> Path:
    """The synthetic pictures as a banana-format data folder (PNG files and label.csv)."""
    folder = root / "banana-detection" / "bananas_train"
    (folder / "images").mkdir(parents=True)
    size = split.images.shape[-1]
    with open(folder / "label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img_name", "label", "xmin", "ymin", "xmax", "ymax"])
        for name, image, rows in zip(split.names, split.images, split.labels, strict=True):
            write_png(image, str(folder / "images" / name))
            writer.writerow([name, 0, *(round(float(v) * size) for v in rows[0, 1:])])
    (root / "banana-detection" / "bananas_val").symlink_to(folder)
    return root


def best_recipe():
    """The composed ``experiment=best`` config (its model, loss and data settings)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        # A fixed epoch count (its 17 before the time budget) for the schedule; the steps cost the same.
        return compose("train", overrides=["experiment=best", "trainer.budget=null", "trainer.max_epochs=17"])


def best_datamodule(data_dir: Path, batch_size: int, placement: str, augment: bool = True) -> BananaDataModule:
    data = best_recipe().data
    return BananaDataModule(
        data_dir=str(data_dir),
        batch_size=batch_size,
        download=False,
        augment=data.augment if augment else "none",
        mosaic=data.mosaic if augment else 0.0,
        zoom_out=data.zoom_out if augment else 1.0,
        augment_on=placement,
    )


def bench_best_bound(split, batch_size, steps, warmup, precision, device) -> float:
    """(a_best) experiment=best's model: forward + loss + backward + step, targets precomputed."""
    module = build_module(best_recipe(), ["banana"]).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)  # the recipe's (its schedule costs nothing)
    images = split.images[:batch_size].to(device)
    with torch.no_grad():
        anchors = module(images)[0]
    targets = module.label_anchors(anchors, split.labels[:batch_size].to(device), images.shape[-2:])
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(precision, device):
            anchors, cls_preds, bbox_preds = module(images)
        module.loss_fn(cls_preds, targets[2], bbox_preds, targets[0], targets[1], anchors=anchors)["loss"].backward()
        optimizer.step()
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def bench_best_step(data_dir, batch_size, steps, warmup, precision, accelerator, placement, augment=True) -> float:
    """(e) experiment=best's full training step through Lightning, data from a real data module."""
    module = build_module(best_recipe(), ["banana"])
    timer = StepTimer(warmup)
    trainer = timed_trainer(accelerator, precision, warmup + steps, timer)
    trainer.fit(module, datamodule=best_datamodule(data_dir, batch_size, placement, augment))
    return timer.count / (timer.end - timer.start)


def bench_data_path(data_dir, batch_size, batches, device, placement) -> float:
    """(f) pictures/s of the loader plus augmentation alone, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dm = best_datamodule(data_dir, batch_size, placement)
        dm.trainer = SimpleNamespace(training=True, strategy=SimpleNamespace(root_device=device))
        dm.setup("fit")
        done, start = 0, 0.0
        while done < batches + 1:
            for images, labels in dm.train_dataloader():  # fetching a batch is part of the path
                dm.on_after_batch_transfer((images.to(device), labels.to(device)), 0)
                done += 1
                if done == 1:  # the first batch warms up
                    sync(device)
                    start = time.perf_counter()
                if done == batches + 1:
                    break
        sync(device)
        return batches * batch_size / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    accelerator = args.accelerator if args.accelerator != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(accelerator)
    precision = resolve_precision(args.precision, accelerator)
    split = synthetic_split(max(args.batch_size * 4, 128))
    common = (split, args.batch_size, args.steps, args.warmup)

    results = {
        "a_model_step": bench_bound(*common, precision, device),
        "b_lightning_step": bench_lightning(*common, precision, accelerator),
        "c_chapter_loop": bench_reference(*common, device),
        "d_inference": bench_inference(*common, precision, device),
        "a_best_model_step": bench_best_bound(*common, precision, device),
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_split(split, Path(tmp))
        steps = (args.batch_size, args.steps, args.warmup, precision, accelerator)
        results["e0_best_step_no_augmentation"] = bench_best_step(data_dir, *steps, "loader", augment=False)
        for placement in ("loader", "device"):
            results[f"e_best_step_augment_{placement}"] = bench_best_step(data_dir, *steps, placement)
        for placement in ("loader", "device"):
            path = bench_data_path(data_dir, args.batch_size, args.steps, device, placement)
            results[f"f_data_path_{placement}"] = path
    hardware = torch.cuda.get_device_name(0) if accelerator == "cuda" else (platform.processor() or platform.machine())
    report = {
        "hardware": hardware,
        "threads": torch.get_num_threads(),
        "accelerator": accelerator,
        "precision": precision,
        "batch_size": args.batch_size,
        "images_per_s": {k: round(v, 2) for k, v in results.items()},
        "b_over_a": round(results["b_lightning_step"] / results["a_model_step"], 3),
        "b_over_c": round(results["b_lightning_step"] / results["c_chapter_loop"], 3),
        **{
            f"e_{where}_over_{base}": round(results[f"e_best_step_augment_{where}"] / results[key], 3)
            for where in ("loader", "device")
            for base, key in (("a_best", "a_best_model_step"), ("e0", "e0_best_step_no_augmentation"))
        },
        "f_threads": 1,
        "torch": torch.__version__,
    }
    print(f"\n{hardware} ({accelerator}, {torch.get_num_threads()} threads), batch {args.batch_size}, {precision}")
    print(f"{'measurement':<46}{'images/s':>10}")
    labels = {
        "a_model_step": "(a) model fwd+bwd+step, tensors in memory",
        "b_lightning_step": "(b) full Lightning training step",
        "c_chapter_loop": "(c) chapter-style loop (fp32, per image)",
        "d_inference": "(d) inference (forward + decoding)",
        "a_best_model_step": "(a_best) experiment=best model step, bound",
        "e0_best_step_no_augmentation": "(e0) best, full step, no augmentation",
        "e_best_step_augment_loader": "(e) best, augmentation in the loader",
        "e_best_step_augment_device": "(e) best, augmentation on the device",
        "f_data_path_loader": "(f) data path alone, loader (1 thread)",
        "f_data_path_device": "(f) data path alone, device (1 thread)",
    }
    for key, value in results.items():
        print(f"{labels[key]:<46}{value:>10.1f}")
    print(f"b/a = {report['b_over_a']:.3f}    b/c = {report['b_over_c']:.3f}")
    for where in ("loader", "device"):
        over_bound, over_plain = report[f"e_{where}_over_a_best"], report[f"e_{where}_over_e0"]
        print(f"e({where})/a_best = {over_bound:.3f}    e({where})/e0 = {over_plain:.3f}")
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
