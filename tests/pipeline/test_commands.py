"""The ``tinyssd`` command: subcommands, --help from one table, packaged configs, one model key."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import real_data_dir, write_banana_dataset
from helpers.paths import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tinyssd.errors import CheckpointError
from tinyssd.model.run_files import model_argument
from tinyssd.pipeline import commands
from tinyssd.pipeline.commands import COMMANDS, CONFIG_DIR, GROUPS, MAIN_KEYS, help_text


def test_the_help_table_names_every_config_group_option_and_nothing_else():
    on_disk = {
        group.name: {p.stem for p in group.glob("*.yaml") if not p.stem.startswith("_")}
        for group in CONFIG_DIR.iterdir()
        if group.is_dir() and group.name != "predict"
    }
    assert {g: set(o) for g, o in GROUPS.items()} == on_disk
    text = help_text("train")
    for group, options in GROUPS.items():
        for option in options:
            assert f"{group}={option} " in text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_main_key_in_the_help_is_a_key_of_the_commands_config(command):
    spec = COMMANDS[command]
    folder = CONFIG_DIR / spec.config_folder if spec.config_folder else CONFIG_DIR
    with initialize_config_dir(version_base="1.3", config_dir=str(folder)):
        cfg = compose(spec.config_name, return_hydra_config=False)
    for key in MAIN_KEYS[command]:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        assert node is not None and leaf in list(node.keys()), f"{command} --help names {key}, which its config lacks"
    assert all(f"  {key} " in help_text(command) for key in MAIN_KEYS[command])


def test_the_clone_s_conf_folder_is_the_packaged_one():
    assert (ROOT / "conf").resolve() == CONFIG_DIR


def _tinyssd(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinyssd.pipeline.commands", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def test_help_and_unknown_commands(tmp_path):
    top = _tinyssd(["--help"], tmp_path)
    assert top.returncode == 0 and all(f"  {name} " in top.stdout for name in COMMANDS)
    train = _tinyssd(["train", "--help"], tmp_path)
    assert train.returncode == 0 and "experiment=best" in train.stdout and "data.data_dir" in train.stdout
    assert "_shared" not in train.stdout  # internal entries are not offered as choices
    wrong = _tinyssd(["fit"], tmp_path)
    assert wrong.returncode == 2 and "'fit' is not a command" in wrong.stderr and "Traceback" not in wrong.stderr
    assert _tinyssd([], tmp_path).returncode == 2


def test_the_model_key_and_its_old_spelling(caplog):
    assert model_argument({"model": "best"}, "eval") == ("model", "best")
    with caplog.at_level(logging.WARNING, logger="tinyssd"):
        assert model_argument({"ckpt_path": "x.ckpt"}, "export") == ("ckpt_path", "x.ckpt")
    assert "ckpt_path= is the old name of model=" in caplog.text
    with pytest.raises(CheckpointError, match="both name the model"):
        model_argument({"model": "a", "ckpt_path": "b"}, "eval")
    with pytest.raises(CheckpointError, match="eval needs a model: give model="):
        model_argument({"model": None, "ckpt_path": None}, "eval")
    assert model_argument({"model": None}, "predict", default="banana") == ("model", "banana")


def test_eval_without_a_model_is_one_paragraph(tmp_path):
    done = _tinyssd(["eval"], tmp_path)
    assert done.returncode == 2 and "give model=" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_an_installed_wheel_runs_every_command_from_an_empty_folder(tmp_path):
    """pip install . (not editable), then predict with the shipped model, train, eval model=best, export model=last,
    each from a folder outside the clone."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # Built from a copy of what the package is made of, as a clean clone has it (no build/ or egg-info left over).
    clone = tmp_path / "clone"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(ROOT / "src", clone / "src", ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, clone / name)
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, clone], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("tinyssd-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True, cwd=tmp_path)
    env = {"PYTHONPATH": str(site)}  # and no TINYSSD_ROOT: the command's own default, the folder it runs in
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run(site, ["-c", "import tinyssd; print(tinyssd.__file__)"], empty, env)
    assert where.stdout.startswith(str(site)), where.stdout  # the installed copy, not the clone

    data = real_data_dir()
    picture = data / "banana.jpg" if data else None
    if picture is not None:
        found = _run(site, ["predict", f"source={picture}"], empty, env)
        assert found.returncode == 0, found.stderr[-2000:]
        (row,) = [line for line in found.stdout.splitlines() if line.startswith("banana.jpg")]
        assert re.fullmatch(r"banana\.jpg +256x256  4: banana (0\.9\d|1\.00)(, banana (0\.9\d|1\.00)){3}", row), (
            row
        )  # at 0.9
        assert list((empty / "logs" / "predict" / "runs").glob("*/detections.json"))

    write_banana_dataset(tmp_path / "data", num_train=8, num_val=4)
    trained = _run(
        site,
        ["train", f"data.data_dir={tmp_path / 'data'}", "trainer.max_epochs=1", "data.batch_size=4", "logger=csv"],
        empty,
        env,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    (run,) = (empty / "logs" / "train" / "runs").iterdir()
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "train.log").is_file()
    evaluated = _run(site, ["eval", "model=best", f"data.data_dir={tmp_path / 'data'}"], run, env)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert list((run / "logs" / "eval" / "runs").glob("*/metrics.json"))
    exported = _run(site, ["export", "model=last"], empty, env)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (run / "checkpoints" / "last.onnx").is_file()


def _run(site: Path, args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """``site/bin/tinyssd ARGS`` (the console script pip wrote), or python with ``-c``."""
    command = [sys.executable, *args] if args[0] == "-c" else [str(site / "bin" / "tinyssd"), *args]
    clean = {k: v for k, v in os.environ.items() if k != "TINYSSD_ROOT"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env={**clean, **env})


def test_bash_completion_completes_commands_keys_and_group_options(tmp_path):
    """The script ``tinyssd -sc install=bash`` prints, run by bash as a shell runs it on <TAB>."""
    shutil.which("bash") or pytest.skip("no bash")
    shim = tmp_path / "bin" / "tinyssd"  # the console script, as pip writes it, for this interpreter
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m tinyssd.pipeline.commands "$@"\n')
    shim.chmod(0o755)
    script = subprocess.run([shim, "-sc", "install=bash"], capture_output=True, text=True, check=True).stdout
    probe = (
        script
        + """
complete_line() {
    COMP_LINE="$1"; local words=($1); COMP_CWORD=$(( ${#words[@]} - 1 ))
    [[ "$1" == *" " ]] && COMP_CWORD=$(( COMP_CWORD + 1 ))
    _tinyssd_completion; echo "${COMPREPLY[*]}"
}
complete_line "tinyssd expo"
complete_line "tinyssd train loss="
complete_line "tinyssd train data.data_"
complete_line "tinyssd predict sou"
complete -p tinyssd
"""
    )
    env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 5, (done.stdout, done.stderr[-2000:])
    assert lines[0] == "export"
    assert lines[1].split() == ["loss=ce_l1", "loss=focal", "loss=smooth_l1"]
    assert lines[2] == "data.data_dir="
    assert lines[3] == "source="
    assert lines[4].endswith(" tinyssd")
    unknown = subprocess.run([shim, "-sc", "install=tcsh"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "install=bash" in unknown.stderr


def test_commands_module_is_the_console_script():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'tinyssd = "tinyssd.pipeline.commands:main"' in pyproject
    assert callable(commands.main)


def test_predict_reads_source_and_its_old_name_input(caplog):
    from tinyssd.deploy.prediction import source_argument
    from tinyssd.errors import ConfigError

    assert source_argument(OmegaConf.create({"source": "a.jpg", "input": None})) == "a.jpg"
    with caplog.at_level(logging.WARNING, logger="tinyssd"):
        assert source_argument(OmegaConf.create({"source": None, "input": "b.jpg"})) == "b.jpg"
    assert "input= is the old name of source=" in caplog.text
    with pytest.raises(ConfigError, match="both name the pictures"):
        source_argument(OmegaConf.create({"source": "a.jpg", "input": "b.jpg"}))
    with pytest.raises(ConfigError, match="give source=PATH"):
        source_argument(OmegaConf.create({"source": None, "input": None}))
