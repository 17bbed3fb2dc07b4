"""Pre-trained feature extractors for transfer learning, named by ``model.backbone``.

    run:PATH            a finished run's model.keras, cut at its feature layer
    run:latest:RECIPE   the newest finished run of RECIPE (resolved once, when a run starts)
    keras:NAME          a keras.applications model without its top
    hub:PRESET|PATH     a KerasHub preset (name, handle or local folder; kerascv_app/models/hub.py)

:func:`load_backbone` returns a Keras model named ``backbone`` that takes images with values
in [0, 255] at its own size and channels and returns features. Its preprocessing is inside
it, as its first layers, so that the target model applies it exactly once: a run's own
``normalize`` layer (its augmentation layers are left out: they belong to the source's
training), the preprocessing its keras.applications model expects, or a KerasHub preset's
image converter.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from kerascv_app.config import Config
from kerascv_app.errors import UserError
from kerascv_app.model_dir import open_model_directory
from kerascv_app.models.backbone_contract import BACKBONE_INPUT_NAME, BACKBONE_NAME, Backbone
from kerascv_app.models.hub import PREPROCESS_LAYER, describe_hub_preprocessing, hub_backbone, resolve_hub_preset
from kerascv_app.runs import STATUS_FILE, RunDirectory, find_runs

LATEST_PREFIX = "latest:"

# keras.applications models and the preprocessing each expects: "built-in" where the
# model rescales its own [0, 255] inputs, otherwise the mode of its preprocess_input.
BUILT_IN = "built-in"
KERAS_APPLICATIONS = {
    **{name: BUILT_IN for name in ("MobileNetV3Small", "MobileNetV3Large")},
    **{f"EfficientNetB{index}": BUILT_IN for index in range(8)},
    **{f"EfficientNetV2{size}": BUILT_IN for size in ("B0", "B1", "B2", "B3", "S", "M", "L")},
    **{f"ConvNeXt{size}": BUILT_IN for size in ("Tiny", "Small", "Base", "Large", "XLarge")},
    **{name: "caffe" for name in ("ResNet50", "ResNet101", "ResNet152", "VGG16", "VGG19")},
    **{
        name: "tf"
        for name in (
            "ResNet50V2",
            "ResNet101V2",
            "ResNet152V2",
            "MobileNet",
            "MobileNetV2",
            "Xception",
            "InceptionV3",
            "InceptionResNetV2",
            "NASNetMobile",
            "NASNetLarge",
        )
    },
    **{name: "torch" for name in ("DenseNet121", "DenseNet169", "DenseNet201")},
}


def load_backbone(config: Config) -> Backbone:
    """The feature extractor that ``config.model.backbone`` names, with its weights."""
    kind, _, argument = config.model.backbone.partition(":")
    if kind == "run":
        return _run_backbone(config, Path(argument))
    if kind == "hub":
        return hub_backbone(config, argument)
    return _keras_application_backbone(config, argument)


def resolve_backbone(config: Config, runs_dir: str | Path) -> Config:
    """Makes a run backbone an absolute path, so that the run records (and resumes from) one model.

    ``run:latest:RECIPE`` becomes the newest finished run of RECIPE in ``runs_dir``; a local
    KerasHub preset folder becomes absolute.
    """
    kind, _, argument = config.model.backbone.partition(":")
    if kind == "hub":
        return dataclasses.replace(
            config, model=dataclasses.replace(config.model, backbone=f"hub:{resolve_hub_preset(argument)}")
        )
    if kind != "run":
        return config
    if argument.startswith(LATEST_PREFIX):
        path = newest_finished_run(Path(runs_dir), argument.removeprefix(LATEST_PREFIX), config.model.backbone)
    else:
        path = Path(argument).expanduser().resolve()
    return dataclasses.replace(config, model=dataclasses.replace(config.model, backbone=f"run:{path}"))


def newest_finished_run(runs_dir: Path, recipe_name: str, reference: str) -> Path:
    if not runs_dir.is_dir():
        raise UserError(
            f"model.backbone = {reference!r}: runs folder {runs_dir} does "
            f"not exist: pass the --runs-dir that holds the {recipe_name} run"
        )
    finished = [
        run
        for run in find_runs(runs_dir)
        if run.status() == "finished" and run.status_record().get("recipe") == recipe_name
    ]
    if not finished:
        raise UserError(
            f"model.backbone = {reference!r}: {runs_dir} holds no finished run of recipe {recipe_name}: "
            f"train one first (kcv fit recipes/{recipe_name}.py) or pass --runs-dir"
        )
    newest = max(finished, key=lambda run: (run.status_record().get("finished", ""), run.path.name))
    return newest.path.resolve()


# ---------------------------------------------------------------------------- a run's model


def _run_backbone(config: Config, path: Path) -> Backbone:
    import keras

    from kerascv_app import backend as backend_module

    reference = f"model.backbone = {config.model.backbone!r}"
    directory = _open_backbone_directory(path, reference)
    try:
        model = directory.load_model()
    except UserError as error:
        raise UserError(f"{reference}: {error}") from error
    # load_model set the backbone's precision policy; the target trains under its own.
    backend_module.set_precision(config.train.precision)
    layer_names = [layer.name for layer in model.layers]
    if "normalize" not in layer_names:
        raise UserError(
            f"{reference}: {directory.model_path} has no 'normalize' layer, so it was "
            "not built by kcv fit from scratch: use a run trained without a backbone"
        )
    if config.model.feature_layer:
        if config.model.feature_layer not in layer_names:
            raise UserError(
                f"model.feature_layer = {config.model.feature_layer!r} is not a layer "
                f"of {directory.model_path}: use one of {', '.join(layer_names)}"
            )
        features = model.get_layer(config.model.feature_layer).output
    else:
        features = _classifier_input(model, reference)
    # From the normalize layer on: the source's augmentation layers stay behind.
    try:
        cut = keras.Model(model.get_layer("normalize").input, features)
    except ValueError as error:
        raise UserError(
            f"model.feature_layer = {config.model.feature_layer!r} does not follow the normalize "
            f"layer of {directory.model_path} ({_first_line(error)}): name a later layer"
        ) from error
    return Backbone(
        _standalone_copy(cut, (*directory.image_size, directory.channels)),
        tuple(directory.image_size),
        directory.channels,
    )


def _open_backbone_directory(path: Path, reference: str):
    try:
        directory = open_model_directory(path)
    except UserError as error:
        raise UserError(f"{reference}: {error}") from error
    if directory.kind != "run":
        raise UserError(
            f"{reference}: {path} is an ensemble, which has no single feature layer: use one of its member runs"
        )
    if (path / STATUS_FILE).is_file() and RunDirectory(path).status() != "finished":
        raise UserError(f"{reference}: {path} did not finish: resume it with kcv fit --resume {path} first")
    return directory


def _classifier_input(model, reference: str):
    """The features of a run's model: what feeds its classifier, the last Dense layer.

    Dropout between the two belongs to the old head and is left behind with it.
    """
    import keras

    dense_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense_layers:
        raise UserError(
            f"{reference}: its model has no Dense classifier to cut "
            "off: name the feature layer with model.feature_layer"
        )
    producers = {id(layer.output): layer for layer in model.layers}
    tensor = dense_layers[-1].input
    while isinstance(producers.get(id(tensor)), keras.layers.Dropout):
        tensor = producers[id(tensor)].input
    return tensor


def _standalone_copy(cut, input_shape: tuple[int, int, int]):
    """The cut-out part as a model of its own layers, with a named input and the source's weights.

    Cloning leaves the loaded run's model and its augmentation layers behind, so the saved
    target model holds only what it uses.
    """
    import keras

    clone = keras.models.clone_model(cut, input_tensors=keras.Input(input_shape, name=BACKBONE_INPUT_NAME))
    clone.set_weights(cut.get_weights())
    return keras.Model(clone.input, clone.output, name=BACKBONE_NAME)


# ---------------------------------------------------------------------------- keras.applications


def _keras_application_backbone(config: Config, name: str) -> Backbone:
    """A keras.applications model without its top, built at the target's image size, in RGB."""
    import keras

    from kerascv_app.models.layers import ImagenetPreprocessing

    if name not in KERAS_APPLICATIONS:
        raise UserError(
            f"model.backbone = 'keras:{name}' is not a supported keras.applications "
            f"model: use one of {', '.join(sorted(KERAS_APPLICATIONS))}"
        )
    weights = config.model.backbone_weights
    if weights and weights != "imagenet" and not Path(weights).expanduser().is_file():
        raise UserError(
            f"model.backbone_weights = {weights!r} does not exist: give the path of a "
            f".weights.h5 or .h5 file of keras:{name} without its top, or 'imagenet'"
        )
    image_size = tuple(config.data.image_size)
    inputs = keras.Input((*image_size, 3), name=BACKBONE_INPUT_NAME)
    mode = KERAS_APPLICATIONS[name]
    preprocessed = inputs if mode == BUILT_IN else ImagenetPreprocessing(mode, name="preprocess")(inputs)
    constructor = getattr(keras.applications, name)
    try:
        application = constructor(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_tensor=preprocessed,
            name=BACKBONE_NAME,
        )
    except Exception as error:  # Keras raises plain Exception for downloads and ValueError for shapes.
        if weights == "imagenet" and "URL fetch failure" in str(error):
            raise UserError(_offline_message(name, error)) from error
        raise UserError(
            f"model.backbone = 'keras:{name}' cannot be built for data.image_size "
            f"{image_size} ({type(error).__name__}: {error}): change data.image_size"
        ) from error
    if weights and weights != "imagenet":
        _load_weights_file(application, name, Path(weights).expanduser())
    if config.model.feature_layer:
        layer_names = [layer.name for layer in application.layers]
        if config.model.feature_layer not in layer_names:
            raise UserError(
                f"model.feature_layer = {config.model.feature_layer!r} is not "
                f"a layer of keras:{name}: use one of {', '.join(layer_names)}"
            )
        application = keras.Model(inputs, application.get_layer(config.model.feature_layer).output, name=BACKBONE_NAME)
    return Backbone(application, image_size, 3)


def _load_weights_file(application, name: str, path: Path) -> None:
    import warnings

    # Keras warns once per layer it cannot match before it raises: those warnings would bury
    # the one line that says what to do, and any that remain mean a partial load.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            application.load_weights(str(path))
            problem = next(
                (str(warning.message) for warning in caught if "freshly-initialized" in str(warning.message)), ""
            )
        except Exception as error:  # Wrong files fail in many ways (shapes, layer counts, formats).
            problem = f"{type(error).__name__}: {_first_line(error)}"
    if problem:
        raise UserError(
            f"model.backbone_weights = {str(path)!r} does not fit keras:{name} without its top, with 3 input channels "
            f"({problem}): give weights saved from keras.applications.{name}(include_top=False)"
        )


def _offline_message(name: str, error: Exception) -> str:
    """Which file to provide, and where Keras looks for it before downloading."""
    match = re.search(r"https?://\S+?\.h5", str(error))
    url = match.group(0) if match else "the ImageNet weights file"
    file_name = url.rsplit("/", 1)[-1] if match else "its weights file"
    return (
        f"model.backbone_weights = 'imagenet': the ImageNet weights of keras:{name} cannot be downloaded (offline?): "
        f"download {url} elsewhere and put it at {keras_cache_dir() / file_name}, "
        "or pass model.backbone_weights=PATH_TO_THE_FILE"
    )


def keras_cache_dir() -> Path:
    """Where keras.utils.get_file keeps downloads: $KERAS_HOME/models, else ~/.keras/models."""
    import os

    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


# ---------------------------------------------------------------------------- records


def describe_preprocessing(backbone) -> str:
    """In words, the preprocessing a backbone model applies to its [0, 255] input."""
    import keras

    from kerascv_app.models.layers import ImagenetPreprocessing

    for layer in backbone.layers:
        if layer.name == PREPROCESS_LAYER:
            return describe_hub_preprocessing(layer)
        if layer.name == "normalize":
            if isinstance(layer, keras.layers.Rescaling):
                return f"the backbone run's own normalize layer (pixels * {layer.scale:.6g} + {layer.offset:.6g})"
            return f"the backbone run's own normalize layer ({type(layer).__name__})"
        if isinstance(layer, ImagenetPreprocessing):
            return f"ImageNet preprocessing, mode {layer.mode!r} (as keras.applications' preprocess_input)"
    return "built into the keras.applications model"
