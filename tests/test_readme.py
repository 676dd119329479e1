"""Every example in README.md runs (or, where it needs hardware this machine lacks, composes).

Shell examples run as written from a scratch folder laid out like the README assumes
(``./`` the project's place for ``logs/``, ``../shared/data`` a tiny banana-format set and a
``banana.jpg``), with size-limiting overrides appended (last wins), placeholders such as
``ckpt_path=...`` filled with a real checkpoint, and the Python example executed there. The
install commands are what ``.ci/run`` runs. Examples that need a GPU, several nodes or a
SLURM cluster are composed and built instead; the few that cannot be even that are listed
in ``NOT_RUN`` with the reason, and any other README command that is not covered fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, compose_train, run_in_process, write_all_formats, write_banana_dataset
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from torchvision.io import write_jpeg

# The manual and the documents it links to (results, guarantees): every command in them runs here.
MANUAL = (ROOT / "README.md").read_text()
README = "\n".join([MANUAL, *((ROOT / "docs" / name).read_text() for name in ("results.md", "guarantees.md"))])
FENCED = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# Appended to every train.py run: tiny, quick, quiet (the README's own overrides come first).
TINY = [
    "data.image_size=64",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "callbacks.progress_bar.refresh_rate=0",
]
CKPT = "logs/train/runs/RUN/checkpoints/epoch_019.ckpt"
ONNX = CKPT.replace(".ckpt", ".onnx")  # what `python export.py ckpt_path=CKPT` writes
# A checkpoint trained on the three-class set, for the examples on ../shared/data/multiclass.
MULTICLASS_CKPT = "logs/train/runs/MULTICLASS/checkpoints/last.ckpt"
PEER_TRAIN = (
    "python benchmarks/peer_yolo.py train --data ../shared/data/banana-detection --budget 1200 "
    "--out benchmarks/results/peer_yolo"
)
NOT_RUN = {
    "pip install ultralytics": "an optional benchmark dependency, never a requirement (only peer_yolo.py train uses it)",
    PEER_TRAIN: (
        "needs ultralytics and trains for 20 minutes; its data conversion is tested in tests/test_benchmarks.py "
        "and its plot command runs here on the committed results"
    ),
    "pip install .": (
        "a non-editable install of the clone: tests/pipeline/test_commands.py builds its wheel, installs it and "
        "runs every command from an empty folder"
    ),
    'pip install ".[export,loggers]"': "the extras' pinned versions are what requirements.txt installs in CI",
    "pip install hydra-submitit-launcher": "installs a cluster launcher; the command it serves needs SLURM",
    "python train.py -m hydra/launcher=submitit_slurm hydra.launcher.gpus_per_node=1 loss=ce_l1,focal": (
        "needs hydra-submitit-launcher and a SLURM cluster"
    ),
}


def _fenced(lang: str) -> list[str]:
    return [body for kind, body in FENCED.findall(README) if kind == lang]


def shell_examples() -> list[str]:
    """Every command line of the README's bash blocks, and its inline commands."""
    lines = []
    for body in _fenced("bash"):
        for line in body.splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                lines.append(" ".join(shlex.quote(t) if t != "&&" else t for t in tokens))
    prose = FENCED.sub("", README)
    for span in re.findall(r"`([^`]+)`", prose):
        text = " ".join(span.split())
        if re.match(r"(python |predict\.py |train\.py |srun |torchrun |tensorboard |pip |tinyssd )", text):
            lines.append(text)
    return list(dict.fromkeys(lines))


def kind(command: str) -> str:
    """run | compose | ci | not_run | unknown (which fails ``test_every_readme_command_is_covered``)."""
    if command in NOT_RUN:
        return "not_run"
    if "pip install" in command:
        return "ci"
    if command.startswith("python -m pytest"):
        return "pytest"
    if command.startswith(("srun ", "torchrun ")) or re.search(r"trainer\.devices=[4-9]", command):
        return "compose"
    if re.match(
        r"(tinyssd (--help|(train|predict|eval|export|check|explain) )|python (train|predict|eval|export|check|explain)\.py|predict\.py|train\.py|python (benchmarks|examples|scripts)/\w+\.py|tensorboard )",
        command,
    ):
        return "run"
    return "unknown"


EXAMPLES = shell_examples()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """``work/`` (cwd, the project root for logs) beside ``shared/data`` with a tiny set and a trained checkpoint."""
    base = tmp_path_factory.mktemp("readme")
    data = write_banana_dataset(base / "shared" / "data", num_train=8, num_val=4)
    write_jpeg(torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8), str(data / "banana.jpg"))
    work = base / "work"
    (work / "my_photos").mkdir(parents=True)
    (work / "shots" / "day1").mkdir(parents=True)
    for folder in (work / "my_photos", work / "shots" / "day1"):
        write_jpeg(torch.randint(0, 255, (3, 80, 80), dtype=torch.uint8), str(folder / "p.jpg"))
    _write_video(work / "clip.mp4")
    result = _run(work, [sys.executable, str(ROOT / "train.py"), "data.data_dir=../shared/data", *TINY])
    assert result.returncode == 0, result.stderr[-3000:]
    (last,) = list((work / "logs" / "train" / "runs").glob("*/checkpoints/last.ckpt"))
    (work / ".banana_last").write_text(str(last))  # the run `ckpt_path=last` examples resume
    (work / CKPT).parent.mkdir(parents=True)
    shutil.copy(last, work / CKPT)
    shutil.copy(last, work / "epoch_019.ckpt")
    shutil.copy(data / "banana.jpg", work / "banana.jpg")
    shutil.copytree(data, work / "data")  # the default data.data_dir
    write_all_formats(data / "multiclass")  # the layout of ../shared/data/multiclass
    result = _run(
        work,
        [
            sys.executable,
            str(ROOT / "train.py"),
            "experiment=multiclass",
            "data.data_dir=../shared/data",
            "hydra.run.dir=logs/train/runs/MULTICLASS",
            *TINY,
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def _write_video(path: Path, frames: int = 4) -> None:
    """A short H.264 clip (PyAV), for the README's video example."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(frames):
            image = torch.full((48, 64, 3), 40 * k, dtype=torch.uint8).numpy()
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def _run(cwd: Path, argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """``argv`` from ``cwd``: the project's Python scripts (entry points, benchmarks, examples) in this
    process (``helpers.run_in_process``) except DDP, whose second process Lightning starts by
    running the script again; anything else (``tensorboard``) as a process. The benchmarks that
    measure in fresh processes still start those."""
    env = {"TINYSSD_ROOT": str(cwd), "PYTHONUNBUFFERED": "1"}
    script = Path(argv[1]) if len(argv) > 1 and argv[0] == sys.executable else None
    if script is not None and script.is_relative_to(ROOT) and "trainer=ddp" not in argv:
        return run_in_process(str(script.relative_to(ROOT)), argv[2:], cwd=cwd, env=env)
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})


def _fill(tokens: list[str]) -> list[str]:
    """Placeholders -> things that exist in the workspace."""
    out = []
    for token in tokens:
        if token == "...":
            continue
        token = token.replace("ckpt_path=...", f"ckpt_path={CKPT}").replace("model=...", f"model={CKPT}")
        token = token.replace("DATE_TIME", "")
        out.append(CKPT if token == "CKPT" else token)
    return out


def _argv(command: str) -> tuple[list[str], str]:
    """The command as this test runs it, and what it is (train, predict, benchmark, tensorboard)."""
    tokens = _fill(shlex.split(command))
    if tokens[0] == "tensorboard":
        return [str(Path(sys.executable).with_name("tensorboard")), "--inspect", "--logdir", "logs"], "tensorboard"
    if tokens[0] == "python":
        tokens = tokens[1:]
    elif tokens[0] == "tinyssd" and tokens[1] == "--help":
        return [sys.executable, "-m", "tinyssd.pipeline.commands", "--help"], "help"
    elif tokens[0] == "tinyssd":  # the console command runs what the script of the same name runs
        tokens = [f"{tokens[1]}.py", *tokens[2:]]
    if tokens[-1] in ("--help", "--hydra-help"):
        return [sys.executable, str(ROOT / tokens[0]), *tokens[1:]], "help"
    script, args = tokens[0], tokens[1:]
    if any(a.startswith("data=") and a != "data=banana" for a in args):  # a multi-class data set
        args = [a.replace(f"ckpt_path={CKPT}", f"ckpt_path={MULTICLASS_CKPT}") for a in args]
        args = [a.replace(f"model={CKPT}", f"model={MULTICLASS_CKPT}") for a in args]
    if script == "predict.py" and not any(a.startswith(("source=", "input=")) for a in args):
        # A fragment such as `predict.py ... threshold=0.9`: the rest filled in.
        given_model = any(a.startswith(("model=", "ckpt_path=")) for a in args)
        args = [*([] if given_model else [f"model={CKPT}"]), "source=banana.jpg", *args]
    argv = [sys.executable, str(ROOT / script), *args]
    if script == "train.py":
        extra = [] if "train=false" in args else TINY
        if "train=false" in args and not any(a.startswith("ckpt_path=") for a in args):
            extra = [f"ckpt_path={CKPT}"]  # the fragment `train.py train=false`: evaluate a checkpoint
        if "ckpt_path=last" in args:  # resume the newest run for one more epoch than it has
            extra = [*extra, "trainer.max_epochs=3"]
        if any(a.startswith("hparams_search=") for a in args):
            extra = [*extra, "hydra.sweeper.n_trials=2"]
        if "-m" in args:  # a sweep: every job completing is what is checked; one epoch each
            extra = [*extra, "trainer.max_epochs=1"]
        if "trainer=ddp" in args:
            # Every training batch, so the step count shows the data split over the processes.
            extra = [e for e in extra if not e.startswith("trainer.limit_train_batches")]
        return [*argv, *extra], "train"
    if script == "eval.py" and not any(a.startswith(("model=", "ckpt_path=")) for a in args):
        args = [f"model={CKPT}", *args]
    if script == "eval.py":
        return [sys.executable, str(ROOT / script), *args, "data.batch_size=4"], "eval"
    if script == "benchmarks/data_cache.py":
        args = [a.replace("/tmp/sets", "sets") for a in args]
        small = {
            "make": ["--small", "6", "--large", "12"],
            "memory": ["--steps", "3"],
            "speed": ["--steps", "3", "--repeats", "1"],
        }
        return [sys.executable, str(ROOT / script), *args, *small[args[0]]], "benchmark"
    if script == "benchmarks/inference.py":
        # One batch size: torch.compile compiles once per size (about 15 s each on 2 cores).
        return [*argv, "--batches", "2", "--calls", "2", "--seconds", "0.1"], "benchmark"
    if script == "benchmarks/peer_yolo.py":
        # The plot of the committed results (read from the checkout), drawn into the scratch folder.
        args = [str(ROOT / a) if a.startswith("benchmarks/results/") and not a.endswith(".png") else a for a in args]
        args = [
            f"{a.rpartition('=')[0]}={ROOT / a.rpartition('=')[2]}" if "=benchmarks/results/" in a else a for a in args
        ]
        args = [Path(a).name if a.endswith(".png") else a for a in args]
        return [sys.executable, str(ROOT / script), *args], "benchmark"
    if script == "scripts/readme_pictures.py":  # a one-epoch run at a tiny size, into the scratch folder
        return [*argv, "--epochs", "2", "--image-size", "64"], "pictures"  # the recipe warms up for 1 epoch
    if script == "benchmarks/eager_batch.py":
        return [*argv, "--batches", "1", "2", "--calls", "1"], "benchmark"
    if script == "benchmarks/train_step.py":
        return [*argv, "--steps", "1", "--warmup", "0", "--batch-size", "2"], "benchmark"
    return argv, Path(script).stem


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in EXAMPLES if kind(c) == "run"])
def test_readme_command_runs(workspace, command):
    argv, what = _argv(command)
    if re.search(r"\b(ckpt_path|model)=(last|best)\b", command):
        # "The newest run" is whichever example ran last (tests run in any order, several at a
        # time): make it the banana run that the example's "..." (same overrides) stands for.
        os.utime((workspace / ".banana_last").read_text())
    if "ckpt_path=last" in command:
        # Resume for one epoch more than the run has (another example may have resumed it already).
        epoch = torch.load((workspace / ".banana_last").read_text(), weights_only=True, map_location="cpu")["epoch"]
        argv = [a for a in argv if not a.startswith("trainer.max_epochs=")] + [f"trainer.max_epochs={epoch + 2}"]
    if "data_cache.py memory" in command and not (workspace / "sets").is_dir():
        # It measures the sets `make` writes; when the make example has not run in this
        # worker's workspace (test order, xdist), make its own.
        argv = [a.replace("sets", "sets_for_memory") if a == "sets" else a for a in argv]
        made = _run(workspace, [argv[0], argv[1], "make", "--out", "sets_for_memory", "--small", "6", "--large", "12"])
        assert made.returncode == 0, made.stderr[-2000:]
    if ONNX in command and what != "export" and not (workspace / ONNX).is_file():
        # The export the README's .onnx examples use (its own export command may run later,
        # or on another worker; writes are atomic).
        from tinyssd.deploy.export import export_model
        from tinyssd.model.checkpoints import load_module

        export_model(load_module(workspace / CKPT), workspace / ONNX)
    result = _run(workspace, argv)
    if what == "predict" and "device=cuda" in command and not torch.cuda.is_available():
        # Documented for GPU machines; here it must fail the documented way.
        assert result.returncode == 2 and "no such CUDA GPU" in result.stderr, result.stderr[-2000:]
        return
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "UserWarning: Callback" not in result.stderr, result.stderr[-2000:]  # Hydra callbacks run cleanly
    if what == "tensorboard":
        assert "scalars" in result.stdout
    elif what == "help":
        assert ("usage: tinyssd" if command.endswith(" --help") else "Hydra") in result.stdout, result.stdout[-2000:]
    elif what == "train" and " -m " in f" {command} ":
        # A sweep: every job completed and is in the summary, one row each.
        sweep = max((workspace / "logs" / "train" / "multiruns").iterdir(), key=lambda p: p.stat().st_mtime)
        jobs = [p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()]
        rows = (sweep / "summary.csv").read_text().strip().splitlines()[1:]
        assert len(jobs) >= 2 and len(rows) == len(jobs) and all(",completed," in r for r in rows), rows
    elif what == "train":
        assert re.search(r"^\s+val/map\s+[\d.]", result.stdout, re.M), result.stdout[-2000:]
        if "trainer=ddp" in command:
            # 8 training images over 2 processes at batch 4: one optimizer step per epoch, 2 epochs.
            run = re.search(r"run folder (\S+)", result.stdout).group(1)
            assert torch.load(workspace / run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    elif what == "export":
        assert "checked: outputs equal PyTorch's" in result.stdout, result.stdout[-2000:]
    elif what == "benchmark" and "inference.py" in command:
        assert "detections equal eager PyTorch's (1e-4): all" in result.stdout, result.stdout[-2000:]
    elif what == "benchmark" and "eager_batch.py" in command:
        assert re.search(r"^network, channels_last\s+[\d.]+\s+[\d.]+$", result.stdout, re.M), result.stdout[-2000:]
    elif what == "pictures":
        names = {p.name for p in (workspace / "docs" / "pictures").iterdir()}
        assert {"curves.png", "val_predictions.png", "pr_curve.png", "confusion_matrix.png", "banana_pred.png"} <= names
    elif what == "eval":
        assert re.search(r"^\s+map_50\s+[\d.]", result.stdout, re.M) and "confusion matrix" in result.stdout


def _first_combination(overrides: list[str]) -> list[str]:
    parsed = OverridesParser.create().parse_overrides(overrides)
    out = []
    for override in parsed:
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={value}")
        else:
            out.append(override.input_line)
    return out


@pytest.mark.parametrize("command", [c for c in EXAMPLES if kind(c) == "compose"])
def test_readme_command_composes_and_builds(tmp_path, command):
    """Commands for hardware this machine lacks: their config composes and every object builds."""
    from tinyssd.pipeline.builders import build, build_module

    tokens = _fill(shlex.split(command))
    start = tokens.index("train") if tokens[0] == "tinyssd" else tokens.index("train.py")
    overrides = [t for t in tokens[start + 1 :] if t != "-m"]
    cfg = compose_train(_first_combination(overrides), tmp_path / "run")
    OmegaConf.resolve(cfg)
    assert cfg.trainer.devices == int(re.search(r"trainer\.devices=(\d+)", command).group(1))
    build_module(cfg)
    build(cfg.data, "data")


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in EXAMPLES if kind(c) == "pytest"])
def test_readme_pytest_command_selects_tests(command):
    """pytest inside pytest would recurse: the command's selection is collected instead."""
    argv = [sys.executable, *shlex.split(command)[1:], "--collect-only"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    assert re.search(r"(\d+)(/\d+)? tests? (collected|selected)", result.stdout), result.stdout[-500:]


@pytest.mark.slow
def test_readme_python_example_runs(workspace, monkeypatch):
    (code,) = _fenced("python")
    monkeypatch.chdir(workspace)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert hasattr(namespace["dets"], "boxes") and namespace["detector"].class_names == ["banana"]


def test_readme_install_commands_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    install = [c for c in EXAMPLES if kind(c) == "ci" and c not in NOT_RUN]
    assert install, "the README has no install command"
    for command in install:
        for step in (s.strip() for s in command.split("&&")):
            words = step.split()
            if words[:3] == ["python3", "-m", "venv"]:
                assert "python3 -m venv" in ci
            elif words[:2] == ["pip", "install"]:
                assert "pip install -q " + " ".join(words[2:]) in ci, step
            elif step.startswith("python -m pytest"):
                assert step in ci
            elif step.startswith(("python train.py", "tinyssd train")):
                assert step in EXAMPLES  # run by test_readme_command_runs as its own line
            else:
                assert words[0] == "." and words[1].endswith("activate"), step


def test_every_readme_command_is_covered():
    kinds = {c: kind(c) for c in EXAMPLES}
    assert not [c for c, k in kinds.items() if k == "unknown"], "README commands no test covers"
    assert "run" in kinds.values() and len(kinds) >= 15
    for command, reason in NOT_RUN.items():
        assert command in EXAMPLES, f"NOT_RUN lists a command the README no longer has: {command}"
        assert reason


def test_the_readme_is_a_manual_of_under_400_lines_whose_links_resolve():
    assert len(MANUAL.splitlines()) <= 400, "the README grew past about 400 lines: move figures to docs/results.md"
    for document in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        for target in re.findall(r"\]\(([^)#\s]+)\)", document.read_text()):
            if "://" not in target:
                assert (document.parent / target).exists(), f"{document.name} links to {target}, which is missing"


def test_the_readme_s_completion_line_is_the_one_the_bash_test_runs():
    assert 'eval "$(tinyssd -sc install=bash)"' in MANUAL  # tests/pipeline/test_commands.py runs that script


def test_architecture_section_names_every_module_on_one_screen():
    section = MANUAL.split("## Architecture\n", 1)[1].split("\n## ", 1)[0]
    assert len(section.strip().splitlines()) <= 50, "the Architecture section no longer fits one screen"
    package = ROOT / "src" / "tinyssd"
    modules = [p.name for p in package.rglob("*.py") if p.name != "__init__.py"]
    missing = [name for name in modules if not re.search(rf"\b{re.escape(name)}", section)]
    assert not missing, f"modules missing from the README's Architecture section: {missing}"
