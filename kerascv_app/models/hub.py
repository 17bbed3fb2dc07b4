"""KerasHub backbones: ``model.backbone = "hub:PRESET"`` or ``"hub:PATH"``.

PRESET is anything KerasHub's ``from_preset`` resolves: a built-in name such as
``resnet_18_imagenet`` (downloaded from Kaggle when online, then cached), a ``kaggle://`` or
``hf://`` handle, or PATH, a local folder that ``save_to_preset`` wrote (or a copy of a
downloaded preset), which is how offline and air-gapped machines work.

The backbone model built here is what :mod:`kerascv_app.models.transfer` expects of every
backbone: a Keras model named ``backbone`` taking [0, 255] images at its own size, with its
preprocessing inside. That preprocessing is the preset's own image converter, applied once:

    backbone_image (converter size, [0, 255]) -> hub_preprocess (pixels * scale + offset,
      the converter's per-channel values) -> the preset's backbone layers -> features

Resizing to the converter's size is done by the transfer model's ``resize_to_backbone`` layer
(bilinear), as for the other backbones; KerasHub's converter would also crop to its aspect
ratio, which square images do not need. The preset's layers are spliced into this model one
by one (not nested as one layer), so that ``train.unfreeze_top`` finds their blocks from the
graph as it does for keras.applications models. That needs every layer to rebuild from its own
config, because the run's model.keras stores the layers' configs, not the preset's; where a
KerasHub layer does not (ViT's patch embedding, in 0.32), the preset's backbone stays one nested
layer, saved by its own config, and stage 2 can only fine-tune it whole (unfreeze_top = 0).
"""

from __future__ import annotations

from pathlib import Path

from kerascv_app.errors import UserError
from kerascv_app.models.backbone_contract import BACKBONE_INPUT_NAME, BACKBONE_NAME, Backbone

HUB_PREFIX = "hub:"
PREPROCESS_LAYER = "hub_preprocess"
INSTALL_COMMAND = 'pip install -e ".[hub]"'
#: Shown when a name is not a preset: a few image-classification presets KerasHub knows.
EXAMPLE_PRESETS = (
    "resnet_18_imagenet",
    "efficientnet_b0_ra_imagenet",
    "mobilenet_v3_small_100_imagenet",
    "vit_base_patch16_224_imagenet",
    "dinov2_small",
)


def is_local_preset(argument: str) -> bool:
    """Whether ``hub:ARGUMENT`` names a folder rather than a preset KerasHub downloads."""
    if "://" in argument:
        return False
    return (
        argument.startswith((".", "/", "~"))
        or "/" in argument
        or "\\" in argument
        or Path(argument).expanduser().is_dir()
    )


def resolve_hub_preset(argument: str) -> str:
    """A local preset as an absolute path, so that the run records (and resumes from) one folder."""
    return str(Path(argument).expanduser().resolve()) if is_local_preset(argument) else argument


def import_keras_hub(reference: str):
    try:
        import keras_hub
    except ImportError as error:
        raise UserError(f"{reference} needs KerasHub, which is not installed: run {INSTALL_COMMAND}") from error
    return keras_hub


def hub_backbone(config, preset: str):
    """The preset's backbone with its image converter's scaling in front, as a ``Backbone``."""
    import keras

    reference = f"model.backbone = {config.model.backbone!r}"
    keras_hub = import_keras_hub(reference)
    if is_local_preset(preset):
        _check_preset_folder(Path(preset).expanduser(), reference)
    source = _load_preset_backbone(keras_hub, preset, reference)
    converter = _load_image_converter(keras_hub, preset, reference)
    channels = int(source.inputs[0].shape[-1])
    image_size = _input_size(source, converter, config)
    scale, offset = (
        _per_channel(converter.scale, channels, "scale", reference),
        _per_channel(converter.offset, channels, "offset", reference),
    )
    if scale is None and offset is None:
        preprocess = None
    else:
        preprocess = keras.layers.Rescaling(
            scale=1.0 if scale is None else scale, offset=0.0 if offset is None else offset, name=PREPROCESS_LAYER
        )
    model = _with_preprocessing(source, preprocess, keras.Input((*image_size, channels), name=BACKBONE_INPUT_NAME))
    if config.model.feature_layer:
        layer_names = [layer.name for layer in model.layers]
        if config.model.feature_layer not in layer_names:
            raise UserError(
                f"model.feature_layer = {config.model.feature_layer!r} is not "
                f"a layer of {preset}: use one of {', '.join(layer_names)}"
            )
        features = model.get_layer(config.model.feature_layer).output
    else:
        features = model.outputs[0]
    return Backbone(keras.Model(model.inputs[0], features, name=BACKBONE_NAME), image_size, channels)


def _check_preset_folder(folder: Path, reference: str) -> None:
    if not folder.is_dir():
        raise UserError(
            f"{reference}: folder {folder} does not exist: give a folder written "
            f"by save_to_preset, or a preset name such as {EXAMPLE_PRESETS[0]}"
        )
    if not (folder / "config.json").is_file():
        raise UserError(
            f"{reference}: {folder} is not a KerasHub preset (it has no config.json): "
            "give a folder written by save_to_preset (or a copy of a downloaded preset)"
        )


def _load_preset_backbone(keras_hub, preset: str, reference: str):
    try:
        return keras_hub.models.Backbone.from_preset(preset)
    except Exception as error:  # KerasHub raises ValueError, ConnectionError, HTTP and file errors.
        raise UserError(_preset_failure(keras_hub, preset, reference, error)) from error


def _preset_failure(keras_hub, preset: str, reference: str, error: Exception) -> str:
    text = f"{type(error).__name__}: {_first_line(error)}"
    if "Unknown preset identifier" in str(error):
        return (
            f"{reference}: {preset!r} is neither a KerasHub preset nor a folder: use a preset name "
            f"({', '.join(EXAMPLE_PRESETS)}; all: keras_hub.models.Backbone.presets), "
            "a kaggle:// or hf:// handle, or a folder written by save_to_preset"
        )
    if not is_local_preset(preset) and _looks_offline(error):
        return (
            f"{reference}: KerasHub cannot download preset {preset!r} "
            f"(offline? {type(error).__name__}); it looks in its caches first "
            f"({_kagglehub_cache()} for built-in and kaggle:// presets, "
            f"{_huggingface_cache()} for hf://): on a machine that is online, "
            f"run keras_hub.models.Backbone.from_preset({preset!r}).save_to_preset(FOLDER) "
            "(with its image converter: ImageClassifier), copy FOLDER here "
            "and pass model.backbone=hub:/path/to/FOLDER"
        )
    return (
        f"{reference}: the preset cannot be loaded as a KerasHub backbone ({text}): give a preset of an image backbone"
    )


def _looks_offline(error: Exception) -> bool:
    names = {type(cause).__name__ for cause in _causes(error)}
    text = str(error)
    return bool(
        names & {"ConnectionError", "NameResolutionError", "MaxRetryError", "gaierror", "Timeout", "ConnectTimeout"}
    ) or any(
        marker in text
        for marker in ("Name or service not known", "Failed to resolve", "Max retries exceeded", "has no config.json")
    )


def _causes(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _kagglehub_cache() -> str:
    try:
        from kagglehub.config import get_cache_folder

        return str(get_cache_folder())
    except Exception:  # An older kagglehub: its documented default.
        return str(Path.home() / ".cache" / "kagglehub")


def _huggingface_cache() -> str:
    import os

    return os.environ.get("HF_HUB_CACHE") or str(
        Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    )


def _load_image_converter(keras_hub, preset: str, reference: str):
    try:
        return keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as error:  # A backbone-only preset has no image_converter.json.
        raise UserError(
            f"{reference}: the preset has no image converter, so the preprocessing its weights expect is unknown "
            f"({type(error).__name__}: {_first_line(error)}): save the preset from its "
            "ImageClassifier (task.save_to_preset), which writes image_converter.json"
        ) from error


def _input_size(source, converter, config) -> tuple[int, int]:
    """The backbone's fixed input size, else its converter's, else the recipe's image size."""
    height, width = source.inputs[0].shape[1:3]
    if height and width:
        return (int(height), int(width))
    if converter.image_size:
        return tuple(int(side) for side in converter.image_size)
    return tuple(config.data.image_size)


def _per_channel(value, channels: int, name: str, reference: str):
    """The converter's scale or offset as one number or one per channel (None if absent)."""
    import numpy as np

    if value is None:
        return None
    values = np.asarray(value, dtype="float64").reshape(-1)
    if values.size == 1:
        return float(values[0])
    if values.size != channels:
        raise UserError(
            f"{reference}: the preset's image converter has {values.size} "
            f"{name} values but its backbone takes {channels} channel(s): "
            "the preset is inconsistent; save it again with a converter made for this backbone"
        )
    return [float(item) for item in values]


def _with_preprocessing(source, preprocess, new_input):
    """The preset's layers on ``new_input``, with ``preprocess`` in front, as one flat model.

    ``clone_model`` re-runs the source graph layer by layer; reusing the loaded layers (the
    identity clone function) keeps the preset's weights without copying them, and the call
    function puts the preprocessing between the new input and the layers that read it.
    """
    import keras

    preprocessed = {}

    def call_with_preprocessing(layer, *args, **kwargs):
        if preprocess is not None:
            args = keras.tree.map_structure(
                lambda tensor: _preprocessed(tensor) if tensor is new_input else tensor, args
            )
        return layer(*args, **kwargs)

    def _preprocessed(tensor):
        if "output" not in preprocessed:
            preprocessed["output"] = preprocess(tensor)
        return preprocessed["output"]

    if not all(_rebuilds_from_config(layer) for layer in source.layers):
        features = source(_preprocessed(new_input) if preprocess is not None else new_input)
        return keras.Model(new_input, features, name="hub_backbone")
    clone = keras.models.clone_model(
        source, input_tensors=new_input, clone_function=lambda layer: layer, call_function=call_with_preprocessing
    )
    return keras.Model(new_input, clone.outputs[0], name="hub_backbone")


def _rebuilds_from_config(layer) -> bool:
    """Whether ``layer`` can be saved in a model.keras of ours and loaded back."""
    try:
        layer.__class__.from_config(layer.get_config())
    except Exception:  # Unknown keyword arguments (TypeError, ValueError) or worse: not saveable.
        return False
    return True


def describe_hub_preprocessing(layer) -> str:
    return f"the KerasHub preset's image converter (pixels * {_numbers(layer.scale)} + {_numbers(layer.offset)})"


def _numbers(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"{item:.6g}" for item in value) + "]"
    return f"{value:.6g}"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
