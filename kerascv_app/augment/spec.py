"""What a recipe may ask of augmentation: op names, their parameters, and their checks.

Keras-free on purpose: recipes import this (through :mod:`kerascv_app.config`) before the
backend is chosen. A recipe lists operations with :func:`op`::

    from kerascv_app.config import AugmentConfig, SEED_PRESET, op

    AugmentConfig(ops=SEED_PRESET + (op("rotate", degrees=15), op("mixup", alpha=0.2)))

Every op and parameter is checked here, when the recipe loads: an unknown op, an unknown
parameter or a value out of range (a probability above 1, a negative magnitude) is a
:class:`UserError` naming the op, the parameter and the value. The Keras side
(:mod:`kerascv_app.augment.registry`) turns the same specs into layers.

Images are augmented as floats in [0, 255], so pixel-valued parameters (noise standard
deviation, solarize threshold) are in those units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kerascv_app.errors import UserError


@dataclass(frozen=True)
class Param:
    """One parameter of an op: its kind, default and allowed values."""

    kind: str  # "int" | "float" | "range" (two floats, low <= high) | "choice"
    default: object
    low: float | None = None
    high: float | None = None
    # A rate such as mixup's alpha must be above ``low``, not equal to it.
    exclusive_low: bool = False
    choices: tuple[str, ...] = ()
    meaning: str = ""

    def expectation(self) -> str:
        """Words for the error message: what a valid value looks like."""
        if self.kind == "choice":
            return "one of " + ", ".join(repr(choice) for choice in self.choices)
        bounds = f"{'(' if self.exclusive_low else '['}{_number_text(self.low)}, {_number_text(self.high)}]"
        if self.kind == "int":
            return f"an integer in {bounds}"
        if self.kind == "float":
            return f"a number in {bounds}"
        return f"two numbers (low, high) with low <= high, both in {bounds}"

    def normalize(self, value):
        """The value in its canonical type (so configs compare equal after JSON), or None if invalid."""
        if self.kind == "choice":
            return value if isinstance(value, str) and value in self.choices else None
        if self.kind == "range":
            if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
                return None
            numbers = tuple(_as_float(item) for item in value)
            if None in numbers or numbers[0] > numbers[1] or not all(self._in_bounds(number) for number in numbers):
                return None
            return numbers
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
                return None
            number = int(value)
        else:
            number = _as_float(value)
            if number is None:
                return None
        return number if self._in_bounds(number) else None

    def _in_bounds(self, number: float) -> bool:
        if self.low is not None and (number < self.low or (self.exclusive_low and number == self.low)):
            return False
        return self.high is None or number <= self.high


def _as_float(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _number_text(number) -> str:
    return "inf" if number is None else f"{number:g}"


@dataclass(frozen=True)
class OpSchema:
    """An op's name, parameters and the facts the pipeline and the model need about it."""

    name: str
    meaning: str
    params: tuple[tuple[str, Param], ...] = ()
    # Mixing ops (mixup, cutmix) change the labels: they always run in the tf.data pipeline.
    mixes_labels: bool = False
    # Colour ops need RGB images (data.channels = 3).
    needs_color: bool = False

    def param(self, key: str) -> Param | None:
        return dict(self.params).get(key)

    def defaults(self) -> dict:
        return {key: spec.default for key, spec in self.params}


OP_SCHEMAS: dict[str, OpSchema] = {}


def _register(schema: OpSchema) -> None:
    if schema.name in OP_SCHEMAS:
        raise ValueError(f"augment op {schema.name!r} is already registered")
    OP_SCHEMAS[schema.name] = schema


def _probability(default: float = 1.0, meaning: str = "the chance that an image gets the op") -> tuple[str, Param]:
    return ("probability", Param("float", default, 0.0, 1.0, meaning=meaning))


def _fill(default: str = "reflect") -> tuple[str, Param]:
    return (
        "fill",
        Param(
            "choice",
            default,
            choices=("reflect", "constant", "nearest"),
            meaning=(
                "what fills pixels that come from outside the image: its mirror image (edge pixel included, numpy's "
                "'symmetric'), black, or the nearest edge pixel"
            ),
        ),
    )


def _axis(default: str = "both") -> tuple[str, Param]:
    return (
        "axis",
        Param(
            "choice",
            default,
            choices=("both", "x", "y"),
            meaning="x: horizontal, y: vertical, both: each independently",
        ),
    )


# Geometric.
_register(
    OpSchema(
        "flip",
        "mirrors an image",
        (
            (
                "mode",
                Param(
                    "choice",
                    "horizontal",
                    choices=("horizontal", "vertical", "both"),
                    meaning="left-right, top-bottom, or each independently",
                ),
            ),
            _probability(0.5, "the chance that an image is mirrored (per axis)"),
        ),
    )
)
_register(
    OpSchema(
        "pad_crop",
        "pads by `padding` pixels and crops back at a random position (a shift of up to `padding` pixels)",
        (
            ("padding", Param("int", 4, 1, 256, meaning="pixels added on each side")),
            _fill("constant"),
        ),
    )
)
_register(
    OpSchema(
        "translate",
        "shifts by a whole number of pixels, up to `fraction` of the size",
        (
            (
                "fraction",
                Param("float", 0.125, 0.0, 1.0, meaning="the largest shift as a fraction of the height (width)"),
            ),
            _axis(),
            _fill(),
            _probability(),
        ),
    )
)
_register(
    OpSchema(
        "rotate",
        "rotates about the centre by an angle drawn from [-degrees, degrees]",
        (
            ("degrees", Param("float", 15.0, 0.0, 180.0)),
            _fill(),
            _probability(),
        ),
    )
)
_register(
    OpSchema(
        "zoom",
        "magnifies about the centre by a factor drawn from `scale` (above 1 zooms in)",
        (
            ("scale", Param("range", (0.8, 1.25), 0.05, 20.0)),
            _fill(),
            _probability(),
        ),
    )
)
_register(
    OpSchema(
        "shear",
        "shears by an angle drawn from [-degrees, degrees]",
        (
            ("degrees", Param("float", 10.0, 0.0, 80.0)),
            _axis(),
            _fill(),
            _probability(),
        ),
    )
)
_register(
    OpSchema(
        "resized_crop",
        "crops a random box (area fraction drawn from `scale`, aspect ratio from `ratio`) and resizes it to the "
        "image size",
        (
            ("scale", Param("range", (0.08, 1.0), 0.0, 1.0, exclusive_low=True)),
            ("ratio", Param("range", (3 / 4, 4 / 3), 0.05, 20.0)),
            _probability(),
        ),
    )
)
# Colour.
_register(
    OpSchema(
        "brightness",
        "adds a delta drawn from [-factor, factor] x 255",
        (("factor", Param("float", 0.2, 0.0, 1.0)), _probability()),
    )
)
_register(
    OpSchema(
        "contrast",
        "scales the distance from the mean by a factor drawn from [1 - factor, 1 + factor]",
        (("factor", Param("float", 0.2, 0.0, 1.0)), _probability()),
    )
)
_register(
    OpSchema(
        "saturation",
        "blends with the image's grey version by a factor drawn from [1 - factor, 1 + factor] (0 grey, 1 unchanged)",
        (("factor", Param("float", 0.2, 0.0, 1.0)), _probability()),
        needs_color=True,
    )
)
_register(
    OpSchema(
        "hue",
        "turns the hue by up to `factor` of a full turn, either way",
        (("factor", Param("float", 0.05, 0.0, 0.5)), _probability()),
        needs_color=True,
    )
)
_register(
    OpSchema(
        "grayscale", "replaces an image by its grey levels (kept as 3 channels)", (_probability(0.1),), needs_color=True
    )
)
_register(
    OpSchema(
        "solarize",
        "inverts the pixels at or above `threshold`",
        (("threshold", Param("float", 128.0, 0.0, 256.0)), _probability()),
    )
)
_register(
    OpSchema(
        "posterize", "keeps the `bits` highest bits of each pixel", (("bits", Param("int", 4, 1, 8)), _probability())
    )
)
_register(OpSchema("equalize", "equalizes each channel's histogram", (_probability(),)))
_register(OpSchema("autocontrast", "stretches each channel to the full [0, 255] range", (_probability(),)))
_register(
    OpSchema(
        "sharpness",
        "sharpens or blurs by a factor between 1 - factor and 1 + factor (1 is unchanged)",
        (("factor", Param("float", 0.5, 0.0, 1.0)), _probability()),
    )
)
# Noise.
_register(
    OpSchema(
        "gaussian_noise",
        "adds gaussian noise with standard deviation `stddev` pixel levels (0-255), then clips",
        (
            ("stddev", Param("float", 8.0, 0.0, 255.0)),
            _probability(),
        ),
    )
)
_register(
    OpSchema(
        "salt_pepper",
        "sets a fraction `amount` of the pixels to white or black (half each)",
        (
            ("amount", Param("float", 0.02, 0.0, 1.0)),
            _probability(),
        ),
    )
)
# Occlusion and mixing.
_register(
    OpSchema(
        "erasing",
        "random erasing / cutout: fills a random rectangle of area fraction drawn from `scale`",
        (
            _probability(0.5, "the chance that an image gets a rectangle"),
            ("scale", Param("range", (0.02, 0.33), 0.0, 1.0, exclusive_low=True)),
            (
                "fill",
                Param(
                    "choice",
                    "random",
                    choices=("random", "zero", "grey"),
                    meaning="random noise, black (cutout), or mid-grey",
                ),
            ),
        ),
    )
)
_register(
    OpSchema(
        "mixup",
        "blends each image with another of the batch, weight drawn from Beta(alpha, alpha); labels blended alike",
        (("alpha", Param("float", 0.2, 0.0, 10.0, exclusive_low=True)),),
        mixes_labels=True,
    )
)
_register(
    OpSchema(
        "cutmix",
        "pastes a box of another image of the batch, area from Beta(alpha, alpha); labels mixed by area",
        (("alpha", Param("float", 1.0, 0.0, 1.0, exclusive_low=True)),),
        mixes_labels=True,
    )
)
# Policies.
_register(
    OpSchema(
        "randaugment",
        "RandAugment: `num_ops` ops per image, each chosen at random per image, of strength up to `magnitude` (0-10)",
        (
            ("num_ops", Param("int", 2, 1, 10)),
            ("magnitude", Param("float", 9.0, 0.0, 10.0)),
        ),
    )
)


@dataclass(frozen=True)
class AugmentOp:
    """One augmentation operation of a recipe: a name and its parameters (sorted pairs).

    Made with :func:`op`; checked on creation, so a bad op never gets past recipe loading.
    """

    name: str
    # Every parameter, sorted by name, defaults filled in.
    params: tuple[tuple[str, object], ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "params", _checked_params(self.name, self.params))

    @property
    def schema(self) -> OpSchema:
        return OP_SCHEMAS[self.name]

    def arguments(self) -> dict:
        """Every parameter, by name (the defaults are filled in on creation)."""
        return dict(self.params)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "params": {key: list(value) if isinstance(value, tuple) else value for key, value in self.params},
        }

    @classmethod
    def from_json(cls, value) -> AugmentOp:
        if isinstance(value, str):
            return parse_op_text(value)
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("name"), str)
            or not isinstance(value.get("params", {}), dict)
        ):
            raise UserError(f"augment op {value!r} is malformed: expected {{'name': str, 'params': {{...}}}}")
        return op(value["name"], **value.get("params", {}))

    def __str__(self) -> str:
        parameters = ", ".join(f"{key}={value!r}" for key, value in self.params)
        return f"{self.name}({parameters})"


def op(name: str, **params) -> AugmentOp:
    """An augmentation op for a recipe, e.g. ``op("rotate", degrees=15)``; checked now."""
    return AugmentOp(name, tuple(sorted(params.items())))


def _checked_params(name, params) -> tuple[tuple[str, object], ...]:
    schema = OP_SCHEMAS.get(name) if isinstance(name, str) else None
    if schema is None:
        raise UserError(f"augment op {name!r} is unknown: use one of {', '.join(OP_SCHEMAS)}")
    if not isinstance(params, tuple) or not all(
        isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) for pair in params
    ):
        raise UserError(
            f"augment op {name!r}: parameters {params!r} are malformed: make ops with op({name!r}, key=value)"
        )
    checked = []
    for key, value in sorted(params):
        spec = schema.param(key)
        if spec is None:
            known = ", ".join(key for key, _ in schema.params) or "none"
            raise UserError(f"augment op {name!r} has no parameter {key!r}: its parameters are {known}")
        normalized = spec.normalize(value)
        if normalized is None:
            raise UserError(f"augment op {name!r}: {key} = {value!r} is invalid: expected {spec.expectation()}")
        checked.append((key, normalized))
    # Every parameter is recorded, defaults included: config.json then says exactly what
    # ran, and two ops that mean the same compare equal.
    return tuple(sorted({**schema.defaults(), **dict(checked)}.items()))


def parse_op_text(text: str) -> AugmentOp:
    """Parses the command-line form ``name:key=value:key=value`` (a range as ``low/high``).

    ``--set augment.ops=flip,pad_crop:padding=4,zoom:scale=0.8/1.2``
    """
    name, *assignments = [part.strip() for part in text.strip().split(":")]
    params = {}
    for assignment in assignments:
        key, separator, value = assignment.partition("=")
        if not separator or not key:
            raise UserError(f"augment op {text!r}: {assignment!r} is not key=value; write e.g. rotate:degrees=15")
        params[key.strip()] = _parse_value(value.strip())
    return op(name, **params)


def _parse_value(text: str):
    if "/" in text:
        return tuple(_parse_value(part.strip()) for part in text.split("/"))
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


# The source document's augmentation: RandomHorizontalFlip() and RandomCrop(32, padding=4).
SEED_PRESET: tuple[AugmentOp, ...] = (op("flip"), op("pad_crop", padding=4))

# A heavy set, the benchmarks' (bench/pipeline.py, bench/device_augment.py): the source's
# flip and crop, then rotation, colour jitter (torchvision's ColorJitter(0.2, 0.2, 0.2,
# 0.05) in spirit), gaussian noise and random erasing.
HEAVY_PRESET: tuple[AugmentOp, ...] = SEED_PRESET + (
    op("rotate", degrees=15),
    op("brightness", factor=0.2),
    op("contrast", factor=0.2),
    op("saturation", factor=0.2),
    op("hue", factor=0.05),
    op("gaussian_noise", stddev=8.0),
    # Grey: torchvision's RandomErasing fills with 0 after Normalize((0.5,)*3, (0.5,)*3).
    op("erasing", probability=0.5, fill="grey"),
)

PLACEMENTS = ("pipeline", "device")


def split_by_placement(
    ops: tuple[AugmentOp, ...], placement: str
) -> tuple[tuple[AugmentOp, ...], tuple[AugmentOp, ...]]:
    """(ops for the tf.data pipeline, ops for inside the model).

    With ``placement = "device"`` the image ops go into the model and the mixing ops stay
    in the pipeline, because the model never sees the labels they must mix. The mixing
    then happens before the device ops, which is harmless: those ops keep each image's
    label, so they may act on a mixed image as on any other.
    """
    if placement == "pipeline":
        return tuple(ops), ()
    mixing = tuple(operation for operation in ops if operation.schema.mixes_labels)
    image_ops = tuple(operation for operation in ops if not operation.schema.mixes_labels)
    return mixing, image_ops
