"""Every command of the README's tour, run as written, in smoke mode, on data made here.

The tour is read from README.md itself, so a command added there is run here too. What is
changed, and why: fits get --smoke (one epoch, a few hundred images); --backend names the
backend under test (each tox environment has one); sources that would download (cifar10,
fashion_mnist) get --data with a tiny copy in the real format; the CIFAR-10 JPEG copy is a
generated class-per-folder archive laid out as it is; the
example run directories are the runs made earlier in the tour. Only ``kcv fit --resume``
is left out: it needs a killed run (tests/test_fit_cli.py kills one and resumes it).
The commands run in this process (the backend is the same for all), which saves a start-up each.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import shlex
import tarfile

import numpy as np
import pytest

from kcv_testing import BACKEND, REPO_ROOT

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
README_JPEG_COPY = "../shared/data/cifar10-jpeg.tar.gz"


def tour_commands() -> list[list[str]]:
    readme = (REPO_ROOT / "README.md").read_text()
    tour = readme.split("## A tour", 1)[1]
    block = tour.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def jpeg_copy_likeness(folder) -> str:
    """An archive laid out as the JPEG copy is (train/<class>/, test/<class>/), tiny: listing and
    checking the real copy's 60,000 files would take most of this test's time, and
    tests/test_fit_cli.py already trains on the real copy when it is there."""
    from PIL import Image

    random = np.random.default_rng(5)
    for split, count in (("train", 12), ("test", 4)):
        for label, name in enumerate(CIFAR10_CLASSES):
            (folder / "tree" / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(random.normal(20 * label + 30, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / "tree" / split / name / f"{index}.png")
    archive = folder / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "tree", arcname="cifar10")
    return str(archive)


def run_in_process(arguments: list[str]) -> None:
    from kerascv_app.cli import app

    app(arguments, standalone_mode=False)


@pytest.mark.shared_data
def test_every_tour_command_runs_as_written(tmp_path, monkeypatch, capsys, cifar10_archive, fashion_mnist_dir):
    from kerascv_app.recipe import load_recipe

    commands = tour_commands()
    assert commands[0] == ["kcv", "doctor"] and len(commands) >= 10
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(REPO_ROOT / "recipes")
    jpeg_copy = jpeg_copy_likeness(tmp_path)
    # A copy of its own: moved away at the end, for kcv evaluate --data.
    cifar10_copy = shutil.copy(cifar10_archive, tmp_path / "cifar-10-python.tar.gz")
    downloaded = {"cifar10": str(cifar10_copy), "fashion_mnist": str(fashion_mnist_dir)}
    ran = []
    for command in commands:
        assert command[0] == "kcv", command
        arguments = [jpeg_copy if argument == README_JPEG_COPY else argument for argument in command[1:]]
        if "--backend" in arguments:
            arguments[arguments.index("--backend") + 1] = BACKEND
        if arguments[0] == "fit":
            if "--resume" in arguments:
                continue
            source = load_recipe(REPO_ROOT / arguments[1])[0].data.source
            if "--data" not in arguments and source in downloaded:
                arguments += ["--data", downloaded[source]]
            arguments += [] if "--smoke" in arguments else ["--smoke"]
        # The README's example run directories: the newest run of that recipe made above.
        for index, argument in enumerate(arguments):
            example = re.fullmatch(r"runs/([a-z0-9_]+)-\d{8}-\d{6}", argument)
            if example:
                made = sorted((tmp_path / "runs").glob(f"{example.group(1)}-*"))
                assert made, f"the tour uses a {example.group(1)} run before making one"
                arguments[index] = str(made[-1])
        started = time.perf_counter()
        run_in_process(arguments)
        print(f"{time.perf_counter() - started:.1f} s  kcv {' '.join(arguments)}", file=sys.__stderr__)
        output = capsys.readouterr()
        assert "Traceback" not in output.err and "error:" not in output.err, (arguments, output.err)
        ran.append(arguments[0])
    finished = sorted(path.name.rsplit("-", 2)[0] for path in (tmp_path / "runs").iterdir())
    assert finished == ["cifar10_baseline", "cifar10_fast", "cifar10_resnet", "digits", "digits", "fashion_mnist"], finished
    assert (tmp_path / "grid.png").is_file()
    assert {"doctor", "fit", "runs", "evaluate", "models", "preview", "export"} <= set(ran)
    assert (tmp_path / "saved_models" / "onnx" / "digits" / "1" / "model.onnx").is_file()

    # kcv evaluate --data: the run's data moved elsewhere (CIFAR's images are identified by
    # position, so the moved archive holds the run's test images) gives the same metrics.
    (resnet_run,) = (tmp_path / "runs").glob("cifar10_resnet-*")
    (tmp_path / "moved").mkdir()
    moved = shutil.move(cifar10_copy, tmp_path / "moved" / "cifar-10-python.tar.gz")
    run_in_process(["evaluate", str(resnet_run), "--data", str(moved), "--json"])
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(json.loads((resnet_run / "metrics.json").read_text())["test"]["accuracy"], abs=1e-6)
