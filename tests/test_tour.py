"""Every command of the quickstart page (docs/quickstart.md), run as written, in smoke mode, on data made here.

The commands are read from the page's ```bash blocks, so a command added there is run here too,
and the README's commands are checked to be the page's. What is changed, and why: fits get
--smoke (one epoch, a few hundred images); --backend names the backend under test (each tox
environment has one); sources that would download (cifar10, fashion_mnist) get --data with a
tiny copy in the real format; the page's placeholders (PLACEHOLDERS) become files made here:
``~/photos`` a generated class-per-folder archive laid out as the CIFAR-10 JPEG copy is; the
example run directories are the runs made earlier on the page. Set-up lines (pip install, tox)
are not run: they made the environment this test runs in. Only ``kcv fit --resume`` is left
out: it needs a killed run (tests/test_fit_cli.py kills one and resumes it).
The commands run in this process (the backend is the same for all), which saves a start-up each.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import tarfile
import time

import numpy as np
import pytest
from kcv_testing import BACKEND, REPO_ROOT

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
QUICKSTART = REPO_ROOT / "docs" / "quickstart.md"
#: Set-up commands on the page: how the environment under test was made, not run again here.
SETUP_COMMANDS = (["pip", "install"], ["tox"])


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def commands_of(block: str) -> list[list[str]]:
    """One command per `&&`-separated part of each line, comments dropped."""
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            part, words = (words[: words.index("&&")], words[words.index("&&") + 1 :]) if "&&" in words else (words, [])
            commands.append(part)
    return commands


def quickstart_commands() -> list[list[str]]:
    """The page's kcv commands in order; every other command must be a known set-up one."""
    commands = [command for block in bash_blocks(QUICKSTART.read_text()) for command in commands_of(block)]
    for command in commands:
        assert command[0] == "kcv" or any(command[: len(setup)] == setup for setup in SETUP_COMMANDS), command
    return [command for command in commands if command[0] == "kcv"]


def test_the_readmes_commands_are_the_quickstarts():
    readme_blocks = bash_blocks((REPO_ROOT / "README.md").read_text())
    quickstart_blocks = bash_blocks(QUICKSTART.read_text())
    # The two opening commands (set-up + main job, tests) are the page's first block, word for word.
    assert readme_blocks[0] == quickstart_blocks[0], readme_blocks[0]
    assert commands_of(readme_blocks[0]) == [
        ["pip", "install", "-e", "."],
        ["kcv", "fit", "recipes/digits.py"],
        ["pip", "install", "tox"],
        ["tox"],
    ]
    page = quickstart_commands()
    for command in (command for block in readme_blocks[1:] for command in commands_of(block)):
        assert command[0] != "kcv" or command in page, (
            f"README runs {' '.join(command)!r}, which docs/quickstart.md does not"
        )


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


# Under tensorflow, the backend a fresh `pip install -e .` gets: the page's commands are parsed and
# dispatched the same way under every backend, and what each command does on jax and torch (fit,
# evaluate, ensemble, export, predict, report) is tested there by the tests of that command.
@pytest.mark.shared_data
@pytest.mark.backends("tensorflow")
def test_every_quickstart_command_runs_as_written(
    tmp_path, monkeypatch, capsys, cifar10_archive, fashion_mnist_dir, digit_images
):
    from kerascv_app.recipe import load_recipe

    commands = quickstart_commands()
    assert commands[0] == ["kcv", "fit", "recipes/digits.py"] and len(commands) >= 15, commands
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(REPO_ROOT / "recipes")
    # A copy of its own: moved away at the end, for kcv evaluate --data.
    cifar10_copy = shutil.copy(cifar10_archive, tmp_path / "cifar-10-python.tar.gz")
    placeholders = {
        "~/photos": jpeg_copy_likeness(tmp_path),
        "cifar-10-python.tar.gz": str(cifar10_copy),
        "photo.jpg": str(digit_images[0]),
    }
    downloaded = {"cifar10": str(cifar10_copy), "fashion_mnist": str(fashion_mnist_dir)}
    ran = []
    for command in commands:
        arguments = [placeholders.get(argument, argument) for argument in command[1:]]
        if "--backend" in arguments:
            arguments[arguments.index("--backend") + 1] = BACKEND
        if arguments[0] == "fit":
            if "--resume" in arguments:
                continue
            source = load_recipe(REPO_ROOT / arguments[1])[0].data.source
            if "--data" not in arguments and source in downloaded:
                arguments += ["--data", downloaded[source]]
            arguments += [] if "--smoke" in arguments else ["--smoke"]
        # The page's example run directories: the newest run of that recipe made above.
        for index, argument in enumerate(arguments):
            example = re.fullmatch(r"runs/([a-z0-9_]+)-\d{8}-\d{6}", argument)
            if example:
                made = sorted((tmp_path / "runs").glob(f"{example.group(1)}-*"))
                assert made, f"the page uses a {example.group(1)} run before making one"
                arguments[index] = str(made[-1])
        started = time.perf_counter()
        run_in_process(arguments)
        print(f"{time.perf_counter() - started:.1f} s  kcv {' '.join(arguments)}", file=sys.__stderr__)
        output = capsys.readouterr()
        assert "Traceback" not in output.err and "error:" not in output.err, (arguments, output.err)
        if arguments[0] == "predict":
            # The image column folds a long path over several lines: its pieces, joined, are the path.
            image_column = "".join(
                line.split("│")[1].strip() for line in output.out.splitlines() if line.startswith("│")
            )
            assert image_column == str(digit_images[0]), output.out
        ran.append(arguments[0])
    finished = sorted(path.name.rsplit("-", 2)[0] for path in (tmp_path / "runs").iterdir())
    assert finished == ["cifar10_baseline", "cifar10_fast", "cifar10_resnet", "digits", "digits", "fashion_mnist"], (
        finished
    )
    assert (tmp_path / "grid.png").is_file()
    assert {"doctor", "fit", "runs", "evaluate", "report", "ensemble", "models", "preview", "export", "predict"} <= set(
        ran
    )
    assert (tmp_path / "saved_models" / "onnx" / "digits" / "1" / "model.onnx").is_file()
    # The ensemble took both digits runs: they share data, classes and splits.
    assert len(json.loads((tmp_path / "ensembles" / "digits" / "ensemble.json").read_text())["members"]) == 2

    # kcv evaluate --data: the run's data moved elsewhere (CIFAR's images are identified by
    # position, so the moved archive holds the run's test images) gives the same metrics.
    (resnet_run,) = (tmp_path / "runs").glob("cifar10_resnet-*")
    (tmp_path / "moved").mkdir()
    moved = shutil.move(cifar10_copy, tmp_path / "moved" / "cifar-10-python.tar.gz")
    run_in_process(["evaluate", str(resnet_run), "--data", str(moved), "--json"])
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(
        json.loads((resnet_run / "metrics.json").read_text())["test"]["accuracy"], abs=1e-6
    )
