"""From op specs to runnable steps: the one place where each op gets its implementation.

A step draws all its randomness from the ``seed`` it is given (a Keras SeedGenerator in
the model, a per-batch stateless seed in tf.data) and works on whole batches through the
``backend`` it is given, so one step serves both placements.

Most colour, occlusion and mixing ops are Keras's own layers (RandomBrightness,
RandomContrast, RandomHue, RandomGrayscale, RandomPosterization, AutoContrast,
RandomSharpness, RandomErasing, MixUp, CutMix), driven through their
``get_random_transformation`` / ``transform_images`` / ``transform_labels`` methods so that
the seed can be passed in. Geometric ops, noise, saturation, solarize and equalize are in
:mod:`geometry` and :mod:`pixels` (see there why Keras's layers for these are not used). RandAugment is
assembled here from the same steps, because Keras's RandAugment applies one op choice to
a whole batch, ignores a passed seed and contains layers that turn XLA off.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from kerascv_app.augment import geometry, pixels
from kerascv_app.augment.spec import OP_SCHEMAS, AugmentOp, op

VALUE_RANGE = (0, 255)


class Step:
    """One op ready to run on a batch."""

    mixes_labels = False

    def keras_layers(self) -> list:
        """The Keras layers inside, whose backend must follow the calling layer's."""
        return []

    def apply(self, backend, images, labels, seed):
        """Returns (images, labels); labels are None inside the model."""
        raise NotImplementedError


class FunctionStep(Step):
    """A function ``(backend, images, seed) -> images`` applied to each image with a probability."""

    def __init__(self, function: Callable, probability: float = 1.0):
        self.function = function
        self.probability = probability

    def apply(self, backend, images, labels, seed):
        transformed = self.function(backend, images, seed)
        return pixels.apply_with_probability(backend, images, transformed, seed, self.probability), labels


class KerasLayerStep(Step):
    """One of Keras's augmentation layers, with its randomness drawn from the given seed."""

    def __init__(self, layer, probability: float = 1.0, mixes_labels: bool = False, works_in_place: bool = False):
        self.layer = layer
        self.probability = probability
        self.mixes_labels = mixes_labels
        # RandomBrightness adds in place (images += delta): under torch that would change
        # the batch that the probability gate and RandAugment still need, so it gets a copy.
        self.works_in_place = works_in_place

    def keras_layers(self) -> list:
        return [self.layer]

    def random_transformation(self, backend, data, seed):
        return self.layer.get_random_transformation(data, training=True, seed=seed)

    def apply(self, backend, images, labels, seed):
        data = {"images": images, "labels": labels} if self.mixes_labels else images
        transformation = self.random_transformation(backend, data, seed)
        source = backend.numpy.copy(images) if self.works_in_place else images
        transformed = self.layer.transform_images(source, transformation, training=True)
        if self.mixes_labels:
            return transformed, self.layer.transform_labels(labels, transformation, training=True)
        # Some colour layers (saturation, hue) can leave the range; the next op expects it.
        transformed = backend.numpy.clip(transformed, *VALUE_RANGE)
        return pixels.apply_with_probability(backend, images, transformed, seed, self.probability), labels


class CutMixStep(KerasLayerStep):
    """Keras's CutMix, with each label weighed by the pixels actually pasted.

    Keras weighs the labels by the area of a box with real-valued corners, which differs
    from the whole pixels it pastes by up to a row and a column (3% of a 32x32 image).
    """

    def random_transformation(self, backend, data, seed):
        transformation = super().random_transformation(backend, data, seed)
        pasted_fraction = backend.numpy.mean(
            backend.cast(transformation["batch_masks"][..., 0], "float32"), axis=(1, 2)
        )
        return {**transformation, "mix_weight": 1.0 - pasted_fraction}


class RandAugmentStep(Step):
    """RandAugment (Cubuk et al. 2020): ``num_ops`` rounds; in each, every image gets one op
    (or none) drawn uniformly, per image. Every candidate is computed on the whole batch and
    each image keeps its draw's result: whole-batch ops, no per-image branches.
    """

    def __init__(self, candidates: list[Step], num_ops: int):
        self.candidates = candidates
        self.num_ops = num_ops

    def keras_layers(self) -> list:
        return [layer for candidate in self.candidates for layer in candidate.keras_layers()]

    def apply(self, backend, images, labels, seed):
        batch = backend.shape(images)[0]
        for _ in range(self.num_ops):
            # Draw len(candidates) stands for the identity, as in the paper's op list.
            choices = backend.random.randint((batch, 1, 1, 1), 0, len(self.candidates) + 1, dtype="int32", seed=seed)
            result = images
            for index, candidate in enumerate(self.candidates):
                transformed, _ = candidate.apply(backend, images, None, seed)
                result = backend.numpy.where(choices == index, transformed, result)
            images = result
        return images, labels


BUILDERS: dict[str, Callable[[dict, int], Step]] = {}


def builder(name: str):
    """Registers the function that builds op ``name``'s step from its arguments and the channel count."""
    if name not in OP_SCHEMAS:
        raise ValueError(f"augment op {name!r} has no schema in kerascv_app.augment.spec")

    def register(function):
        if name in BUILDERS:
            raise ValueError(f"augment op {name!r} already has a builder")
        BUILDERS[name] = function
        return function

    return register


def build_step(operation: AugmentOp, channels: int) -> Step:
    return BUILDERS[operation.name](operation.arguments(), channels)


def build_steps(operations, channels: int) -> list[Step]:
    return [build_step(operation, channels) for operation in operations]


def _function(function, gate: float = 1.0, **arguments) -> FunctionStep:
    """A step of ``function`` with its parameters bound, applied to each image with chance ``gate``."""
    return FunctionStep(functools.partial(function, **arguments), gate)


def _keras(
    layer_name: str, gate: float = 1.0, mixes_labels: bool = False, works_in_place: bool = False, **arguments
) -> KerasLayerStep:
    """A step of ``keras.layers.<layer_name>(**arguments)``, applied to each image with chance ``gate``."""
    import keras

    layer_class = getattr(keras.layers, layer_name)
    if "seed" in _init_parameters(layer_class):
        # The layer's own generator is never used (seeds are passed in), but Keras makes one.
        arguments["seed"] = 0
    return KerasLayerStep(layer_class(**arguments), gate, mixes_labels, works_in_place)


@functools.cache
def _init_parameters(layer_class) -> frozenset:
    import inspect

    return frozenset(inspect.signature(layer_class.__init__).parameters)


# Geometric.
@builder("flip")
def _flip(arguments, channels):
    axes = {"horizontal": (2,), "vertical": (1,), "both": (1, 2)}[arguments["mode"]]
    return _function(geometry.random_flip, probability=arguments["probability"], axes=axes)


@builder("pad_crop")
def _pad_crop(arguments, channels):
    padding = arguments["padding"]
    return _function(geometry.random_shift, max_rows=padding, max_columns=padding, fill=arguments["fill"])


@builder("translate")
def _translate(arguments, channels):
    return _function(
        geometry.random_translation,
        arguments["probability"],
        fraction=arguments["fraction"],
        axis=arguments["axis"],
        fill=arguments["fill"],
    )


@builder("rotate")
def _rotate(arguments, channels):
    return _function(
        geometry.random_rotation, arguments["probability"], degrees=arguments["degrees"], fill=arguments["fill"]
    )


@builder("zoom")
def _zoom(arguments, channels):
    return _function(geometry.random_zoom, arguments["probability"], scale=arguments["scale"], fill=arguments["fill"])


@builder("shear")
def _shear(arguments, channels):
    return _function(
        geometry.random_shear,
        arguments["probability"],
        degrees=arguments["degrees"],
        axis=arguments["axis"],
        fill=arguments["fill"],
    )


@builder("resized_crop")
def _resized_crop(arguments, channels):
    return _function(
        geometry.random_resized_crop, arguments["probability"], scale=arguments["scale"], ratio=arguments["ratio"]
    )


# Colour. Keras's factors are mapped so that each op's parameter means what spec.py says.
@builder("brightness")
def _brightness(arguments, channels):
    return _keras(
        "RandomBrightness",
        arguments["probability"],
        works_in_place=True,
        factor=arguments["factor"],
        value_range=VALUE_RANGE,
    )


@builder("contrast")
def _contrast(arguments, channels):
    # A single number f would give [1, 1 + f] (Keras clips the lower end at 0); (f, f) gives [1 - f, 1 + f].
    factor = arguments["factor"]
    return _keras("RandomContrast", arguments["probability"], factor=(factor, factor), value_range=VALUE_RANGE)


@builder("saturation")
def _saturation(arguments, channels):
    return _function(pixels.random_saturation, arguments["probability"], factor=arguments["factor"])


@builder("hue")
def _hue(arguments, channels):
    # Keras turns the hue by half of a draw from [0, factor], with a random sign.
    return _keras("RandomHue", arguments["probability"], factor=(0.0, 2 * arguments["factor"]), value_range=VALUE_RANGE)


@builder("grayscale")
def _grayscale(arguments, channels):
    return _keras("RandomGrayscale", factor=arguments["probability"])


@builder("solarize")
def _solarize(arguments, channels):
    return _function(_ignore_seed(pixels.solarize), arguments["probability"], threshold=arguments["threshold"])


@builder("posterize")
def _posterize(arguments, channels):
    bits = arguments["bits"]
    return _keras("RandomPosterization", arguments["probability"], factor=(bits, bits), value_range=VALUE_RANGE)


@builder("equalize")
def _equalize(arguments, channels):
    return _function(_ignore_seed(pixels.equalize), arguments["probability"])


@builder("autocontrast")
def _autocontrast(arguments, channels):
    return _keras("AutoContrast", arguments["probability"], value_range=VALUE_RANGE)


@builder("sharpness")
def _sharpness(arguments, channels):
    # Keras's sharpness multiplier is twice a draw from its factor range; 1 leaves the image.
    strength = arguments["factor"]
    return _keras(
        "RandomSharpness",
        arguments["probability"],
        factor=((1 - strength) / 2, (1 + strength) / 2),
        value_range=VALUE_RANGE,
    )


# Noise.
@builder("gaussian_noise")
def _gaussian_noise(arguments, channels):
    return _function(pixels.gaussian_noise, arguments["probability"], stddev=arguments["stddev"])


@builder("salt_pepper")
def _salt_pepper(arguments, channels):
    return _function(pixels.salt_and_pepper, arguments["probability"], amount=arguments["amount"])


# Occlusion and mixing.
ERASING_FILLS = {"random": None, "zero": 0.0, "grey": 127.5}


@builder("erasing")
def _erasing(arguments, channels):
    probability = arguments["probability"]
    # Keras's probability is drawn from its factor range: (p, p) makes it exactly p.
    return _keras(
        "RandomErasing",
        factor=(probability, probability),
        scale=arguments["scale"],
        fill_value=ERASING_FILLS[arguments["fill"]],
        value_range=VALUE_RANGE,
    )


@builder("mixup")
def _mixup(arguments, channels):
    return _keras("MixUp", mixes_labels=True, alpha=arguments["alpha"])


@builder("cutmix")
def _cutmix(arguments, channels):
    alpha = arguments["alpha"]
    layer = _keras("CutMix", mixes_labels=True, factor=(alpha, alpha)).layer
    return CutMixStep(layer, mixes_labels=True)


# Policies.
@builder("randaugment")
def _randaugment(arguments, channels):
    return RandAugmentStep(
        [build_step(operation, channels) for operation in randaugment_ops(arguments["magnitude"], channels)],
        arguments["num_ops"],
    )


def randaugment_ops(magnitude: float, channels: int) -> list[AugmentOp]:
    """RandAugment's ops at ``magnitude`` (0-10), with the strengths of timm's implementation.

    As in Keras's RandAugment, ops with a signed strength draw it up to the magnitude's
    (timm's magnitude_std=inf); solarize and posterize use the magnitude's value.
    Saturation ("color") is left out for one-channel images.
    """
    level = magnitude / 10.0
    ops = [
        op("autocontrast"),
        op("equalize"),
        op("rotate", degrees=30.0 * level, fill="constant"),
        op("solarize", threshold=256.0 - 256.0 * level),
        op("posterize", bits=max(1, 8 - round(4 * level))),
        op("contrast", factor=0.9 * level),
        # Additive, so about half of timm's multiplicative 0.9 on a mid-grey image.
        op("brightness", factor=0.45 * level),
        op("sharpness", factor=0.9 * level),
        # timm shears by 0.3 (a slope) at full magnitude: atan(0.3) is 16.7 degrees.
        op("shear", degrees=math.degrees(math.atan(0.3 * level)), axis="x", fill="constant"),
        op("shear", degrees=math.degrees(math.atan(0.3 * level)), axis="y", fill="constant"),
        op("translate", fraction=0.45 * level, axis="x", fill="constant"),
        op("translate", fraction=0.45 * level, axis="y", fill="constant"),
    ]
    if channels == 3:
        ops.append(op("saturation", factor=0.9 * level))
    return ops


def _ignore_seed(function):
    """Adapts a deterministic ``function(backend, images, **arguments)`` to the step signature."""

    @functools.wraps(function)
    def without_seed(backend, images, seed, **arguments):
        return function(backend, images, **arguments)

    return without_seed
