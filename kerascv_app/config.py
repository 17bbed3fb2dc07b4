"""Typed, frozen experiment configuration.

A recipe's ``get_config()`` returns a :class:`Config`. Every field has a type and a
default; ``--set section.key=value`` overrides are parsed against those types, so a
typo or a wrong type is refused with the field's name instead of failing deep inside
training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field

from kerascv_app.augment.spec import PLACEMENTS, SEED_PRESET, AugmentOp, op
from kerascv_app.errors import UserError

__all__ = ["AugmentConfig", "AugmentOp", "Config", "DataConfig", "ModelConfig", "SEED_PRESET", "TrainConfig", "op"]


class _Section:
    """Checks every field's type first, so a recipe's wrong type is named, not a TypeError."""

    section_name = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _has_type(value, hints[f.name]):
                type_name = getattr(hints[f.name], "__name__", str(hints[f.name]))
                raise UserError(f"{self.section_name}.{f.name} = {value!r} has the wrong type: expected {type_name}")
            # inf and nan pass every range check written as a comparison (nan fails none of
            # the `not` forms, inf passes `> 0`), so they are refused here for every float field.
            if hints[f.name] is float and not math.isfinite(value):
                raise UserError(f"{self.section_name}.{f.name} = {value!r} is invalid: expected a finite number")
        self._validate()

    def _validate(self):
        pass


def _has_type(value, annotation) -> bool:
    if typing.get_origin(annotation) is tuple:
        if not isinstance(value, tuple):
            return False
        item_types = typing.get_args(annotation)
        if len(item_types) == 2 and item_types[1] is Ellipsis:
            return all(_has_type(item, item_types[0]) for item in value)
        return len(value) == len(item_types) and all(_has_type(v, t) for v, t in zip(value, item_types))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


@dataclass(frozen=True)
class DataConfig(_Section):
    section_name = "data"

    # Where the images come from: digits | fashion_mnist | idx:DIR | cifar10 | cifar100 |
    # cifar10:PATH | folder:PATH (a class-per-folder tree or a .tar/.tar.gz of one) | tfds:NAME.
    source: str = "digits"
    # Images are resized to this (height, width) and converted to this many channels.
    image_size: tuple[int, int] = (32, 32)
    channels: int = 3
    # Held out from the training data, stratified by class and seeded by split_seed.
    val_fraction: float = 0.1
    # Used only when the source has no test split of its own.
    test_fraction: float = 0.2
    # Seeds the held-out splits. Separate from train.seed, so that runs with different
    # training seeds share their validation and test images and can be ensembled.
    split_seed: int = 0
    batch_size: int = 128
    # "auto" keeps decoded images in RAM when all splits fit in a quarter of the memory
    # available, else streams; "memory" always keeps them; "none" decodes every epoch
    # (datasets larger than memory); any other value is a file prefix (one cache per split).
    cache: str = "auto"
    shuffle_buffer: int = 10_000
    # Keep only these classes (by name), in this order; empty keeps all.
    classes: tuple[str, ...] = ()
    # Caps on the number of images (0 = all): --smoke uses them for quick runs.
    max_train: int = 0
    max_eval: int = 0
    # Keep at most this many images per class of the source's training split (0 = all),
    # drawn with data.split_seed before the validation split is held out: a labelled-data
    # budget, e.g. 125 with val_fraction 0.2 gives 100 training and 25 validation images
    # per class. The test split is never capped by it.
    labelled_per_class: int = 0

    def _validate(self):
        _check(
            len(self.image_size) == 2 and min(self.image_size) > 0,
            "data.image_size",
            self.image_size,
            "two positive integers, e.g. 32,32",
        )
        _check(self.channels in (1, 3), "data.channels", self.channels, "1 or 3")
        _check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "a fraction in [0, 1)")
        _check(0.0 < self.test_fraction < 1.0, "data.test_fraction", self.test_fraction, "a fraction in (0, 1)")
        _check(self.batch_size > 0, "data.batch_size", self.batch_size, "a positive integer")
        _check(self.shuffle_buffer > 0, "data.shuffle_buffer", self.shuffle_buffer, "a positive integer")
        _check(
            self.max_train >= 0 and self.max_eval >= 0,
            "data.max_train/max_eval",
            (self.max_train, self.max_eval),
            "0 (all) or a positive count",
        )
        _check(
            self.labelled_per_class >= 0,
            "data.labelled_per_class",
            self.labelled_per_class,
            "0 (all) or a positive count per class",
        )


@dataclass(frozen=True)
class AugmentConfig(_Section):
    section_name = "augment"

    # Operations applied in order to training batches, made with op(): see
    # kerascv_app/augment/spec.py for every op and its parameters, and SEED_PRESET for the
    # source's flip + pad-4 crop. Empty: no augmentation.
    ops: tuple[AugmentOp, ...] = ()
    # "pipeline": tf.data on the CPU; "device": inside the model, active only in training.
    # Mixing ops (mixup, cutmix) change labels, so they run in the pipeline either way.
    placement: str = "pipeline"
    # Pixel scaling baked into the model: "symmetric" maps [0, 255] to [-1, 1] (the
    # source's Normalize((0.5,)*3, (0.5,)*3)), "unit" to [0, 1], "none" keeps [0, 255],
    # "imagenet" subtracts ImageNet's channel means and divides by its standard deviations.
    normalization: str = "symmetric"

    def _validate(self):
        _check(self.placement in PLACEMENTS, "augment.placement", self.placement, "'pipeline' or 'device'")
        _check(
            self.normalization in NORMALIZATIONS,
            "augment.normalization",
            self.normalization,
            ", ".join(repr(name) for name in NORMALIZATIONS),
        )


NORMALIZATIONS = ("symmetric", "unit", "none", "imagenet")


@dataclass(frozen=True)
class ModelConfig(_Section):
    section_name = "model"

    # A name from the model registry: see `kcv models`.
    name: str = "seed_cnn"
    # Options; each builder uses those that apply to it.
    dropout: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    width: int = 16  # resnet: channels of the first stage
    depth: int = 20  # resnet: 6n+2 layers
    hidden_units: int = 512  # seed_cnn: fully connected layer size
    extra_pooling: bool = True  # seed_cnn: the third pooling that fixes the source's view() bug
    # Transfer learning (kerascv_app/models/transfer.py): start from a pre-trained backbone
    # instead of building `name` from scratch, and put a new classifier on its features.
    #   ""                   no backbone: `name` is built with random weights
    #   "run:PATH"           a finished run's model, cut at its feature layer
    #   "run:latest:RECIPE"  the newest finished run of RECIPE in --runs-dir (resolved at the start)
    #   "keras:NAME"         a keras.applications model without its top, e.g. keras:MobileNetV3Small
    #   "hub:PRESET"         a KerasHub preset, e.g. hub:resnet_18_imagenet (downloaded when online),
    #   "hub:PATH"           or a local preset folder (save_to_preset); needs pip install -e ".[hub]"
    # The backbone's own preprocessing replaces augment.normalization (applied exactly once),
    # and `dropout` is the new head's dropout.
    backbone: str = ""
    # keras: backbones only: a local .weights.h5/.h5 file of the model without its top,
    # "imagenet" (downloaded by Keras when online), or "" for random weights.
    backbone_weights: str = ""
    # The layer whose output is the features; "" = a run's layer feeding its classifier, or a
    # keras.applications model's last layer. 4-D outputs are average-pooled by the head.
    feature_layer: str = ""

    def _validate(self):
        _check(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "a rate in [0, 1)")
        _check(self.l1 >= 0.0, "model.l1", self.l1, "a non-negative factor")
        _check(self.l2 >= 0.0, "model.l2", self.l2, "a non-negative factor")
        _check(self.width > 0, "model.width", self.width, "a positive integer")
        _check(self.depth > 0, "model.depth", self.depth, "a positive integer")
        _check(self.hidden_units > 0, "model.hidden_units", self.hidden_units, "a positive integer")
        kind, _, argument = self.backbone.partition(":")
        _check(
            not self.backbone or (kind in ("run", "keras", "hub") and argument),
            "model.backbone",
            self.backbone,
            "'' (none), run:PATH, run:latest:RECIPE, keras:NAME, hub:PRESET or hub:PATH",
        )
        _check(
            not self.backbone_weights or kind == "keras",
            "model.backbone_weights",
            self.backbone_weights,
            "'' unless model.backbone is keras:NAME (run and hub backbones bring their own weights)",
        )
        _check(
            not self.feature_layer or bool(self.backbone),
            "model.feature_layer",
            self.feature_layer,
            "'' unless model.backbone is set",
        )


@dataclass(frozen=True)
class TrainConfig(_Section):
    section_name = "train"

    epochs: int = 10
    optimizer: str = "sgd"  # sgd | adamw
    learning_rate: float = 0.01  # peak rate, per batch of data.batch_size images
    # The batch size learning_rate and fine_tune_learning_rate were tuned for. A run whose
    # data.batch_size differs scales both by data.batch_size / learning_rate_batch_size (the
    # linear scaling rule for SGD on a batch's mean loss): a recipe tuned at 1024 images a step
    # and run with --set data.batch_size=64 would otherwise take steps 16 times too long for its
    # batches, and can end on the edge of divergence, predicting one class. 0: the rates are
    # used as given, whatever the batch size. environment.json records the rate used.
    learning_rate_batch_size: int = 0
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = (
        0.0  # decoupled, applied by the optimizer; the fast loop adds it to the gradient (L2, PyTorch's SGD)
    )
    schedule: str = "constant"  # constant | cosine | onecycle | linear
    warmup_epochs: float = 0.0  # linear warm-up for cosine and linear
    label_smoothing: float = 0.0
    # Stop when the validation loss has not improved for this many epochs; 0 is off.
    early_stopping_patience: int = 0
    # Evaluate and save the weights of the best validation epoch instead of the last.
    keep_best: bool = False
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16
    # auto: none on one device, MirroredStrategy (TensorFlow) or DataParallel (JAX) on several GPUs,
    # MultiWorkerMirroredStrategy when TF_CONFIG names several workers, DataParallel over every
    # process's devices when KERAS_DISTRIBUTION_NUM_PROCESSES > 1 (JAX). See kerascv_app/distribution.py.
    distribution: str = "auto"  # auto | none | mirrored | multi_worker_mirrored | data_parallel
    # false: data.batch_size is the global batch, split across the replicas, and results match
    # one device's. true: data.batch_size is per replica, so the global batch is
    # data.batch_size x replicas, and learning_rate (given for data.batch_size) is scaled by
    # the same factor (the linear scaling rule).
    scale_batch_with_replicas: bool = False
    seed: int = 0
    # "keras": Keras's model.fit over the tf.data pipeline. "fast": a short compiled loop over
    # uint8 arrays held on the device, decoded without TensorFlow (kerascv_app/train/fast.py),
    # for small datasets and short runs; it cannot resume.
    loop: str = "keras"
    # Fast loop only: BatchNorm biases learn this many times faster than the other weights.
    bias_learning_rate_scale: float = 1.0
    # Fast loop only: from epoch lookahead_start_epoch (0-based) on, every 5 steps the weights
    # move to their running average, which follows them with this decay per step (airbench's
    # lookahead; the decay grows towards it as (step / total steps) cubed); 0 is off.
    lookahead_decay: float = 0.0
    lookahead_start_epoch: int = 0
    # Fast loop only: a PatchWhitening layer's bias learns during this many first epochs and
    # is frozen after; 0: it learns throughout.
    whitening_bias_epochs: int = 0
    # Transfer learning (model.backbone set) trains in two stages: stage 1 trains the new head
    # for `epochs` with the backbone frozen (BatchNorm in inference mode); stage 2 unfreezes
    # the backbone and trains fine_tune_epochs more (0 = no stage 2) with the same optimizer
    # and schedule at fine_tune_learning_rate, usually 10-100 times lower.
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-4
    # Stage 2 unfreezes only the top N blocks of the backbone; 0 unfreezes all of it. A block
    # is a residual block, or a convolution or dense layer with its BatchNorm, activation and
    # pooling (kerascv_app/models/blocks.py).
    unfreeze_top: int = 0
    # Checkpoints inside an epoch (kerascv_app/train/checkpoint.py), besides the one at every
    # epoch end: a number of steps ("500") or minutes ("10min"). The default bounds what a
    # kill loses to 5 minutes of training on any dataset size, while a small run (digits: an
    # epoch takes a second) never checkpoints inside an epoch. A checkpoint is one .npz of the
    # variables: about 6 ms for digits here (bench/preemption.py); for a ResNet-50's weights
    # and optimizer state (about 300 MB) a few seconds at disk speed (an estimate, not
    # measured here), still about 1% of 5 minutes.
    checkpoint_every: str = "5min"
    # Exponential moving average of the weights (Keras's use_ema, this ema_momentum per
    # step); 0 is off. The averaged weights are evaluated, kept as best and saved as the model.
    ema: float = 0.0
    # Keras's gradient_accumulation_steps: the optimizer applies the mean gradient of this
    # many batches at once (a larger effective batch on a small device); 1 is off.
    gradient_accumulation_steps: int = 1
    # Keras's global_clipnorm: gradients are rescaled so that their global norm is at most
    # this; 0 is off.
    clip_norm: float = 0.0
    # Whole-step compilation: "auto" is Keras's choice (XLA on a GPU with tensorflow, always
    # with jax, off with torch); "true" forces it (XLA on tensorflow, torch.compile on torch),
    # "false" turns it off. Measured on the 2-core CPU (bench/jit_compile.py): XLA made the
    # tensorflow step 8x slower; torch.compile's steady step was 0.69x the eager one but it
    # compiles for minutes first, so it only pays on long runs. See docs/benchmarks.md.
    jit_compile: str = "auto"

    def _validate(self):
        _check(
            self.jit_compile in ("auto", "true", "false"),
            "train.jit_compile",
            self.jit_compile,
            "'auto', 'true' or 'false'",
        )
        _check(self.epochs > 0, "train.epochs", self.epochs, "a positive integer")
        _check(self.optimizer in ("sgd", "adamw"), "train.optimizer", self.optimizer, "'sgd' or 'adamw'")
        _check(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "a positive rate")
        _check(
            self.learning_rate_batch_size >= 0,
            "train.learning_rate_batch_size",
            self.learning_rate_batch_size,
            "a batch size (0: the rates are not scaled)",
        )
        _check(0.0 <= self.momentum < 1.0, "train.momentum", self.momentum, "a value in [0, 1)")
        _check(self.weight_decay >= 0.0, "train.weight_decay", self.weight_decay, "a non-negative factor")
        _check(
            self.schedule in ("constant", "cosine", "onecycle", "linear"),
            "train.schedule",
            self.schedule,
            "'constant', 'cosine', 'onecycle' or 'linear'",
        )
        _check(
            0.0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
            "train.warmup_epochs",
            self.warmup_epochs,
            "fewer epochs than train.epochs",
        )
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", self.label_smoothing, "a value in [0, 1)")
        _check(
            self.early_stopping_patience >= 0,
            "train.early_stopping_patience",
            self.early_stopping_patience,
            "0 (off) or a positive number of epochs",
        )
        _check(self.precision in PRECISIONS, "train.precision", self.precision, " or ".join(PRECISIONS))
        _check(self.distribution in DISTRIBUTIONS, "train.distribution", self.distribution, ", ".join(DISTRIBUTIONS))
        _check(self.loop in ("keras", "fast"), "train.loop", self.loop, "'keras' or 'fast'")
        _check(
            self.bias_learning_rate_scale > 0,
            "train.bias_learning_rate_scale",
            self.bias_learning_rate_scale,
            "a positive factor",
        )
        _check(
            0.0 <= self.lookahead_decay < 1.0,
            "train.lookahead_decay",
            self.lookahead_decay,
            "0 (off) or a decay in (0, 1)",
        )
        _check(
            self.lookahead_start_epoch >= 0,
            "train.lookahead_start_epoch",
            self.lookahead_start_epoch,
            "a 0-based epoch number",
        )
        _check(
            self.whitening_bias_epochs >= 0,
            "train.whitening_bias_epochs",
            self.whitening_bias_epochs,
            "0 (always learns) or a positive number of epochs",
        )
        if self.loop == "fast":
            # The fast loop adds weight decay to SGD's gradient and has no loss scaling.
            _check(self.optimizer == "sgd", "train.optimizer", self.optimizer, "'sgd' with train.loop = 'fast'")
            _check(
                self.precision != "mixed_float16",
                "train.precision",
                self.precision,
                "float32 or mixed_bfloat16 with train.loop = 'fast' (it has no loss scaling)",
            )
            _check(
                self.distribution in ("auto", "none"),
                "train.distribution",
                self.distribution,
                "'auto' or 'none' with train.loop = 'fast' (one device)",
            )
        _check(
            self.fine_tune_epochs >= 0,
            "train.fine_tune_epochs",
            self.fine_tune_epochs,
            "0 (no stage 2) or a positive number of epochs",
        )
        _check(
            self.fine_tune_learning_rate > 0,
            "train.fine_tune_learning_rate",
            self.fine_tune_learning_rate,
            "a positive rate",
        )
        _check(
            self.unfreeze_top >= 0,
            "train.unfreeze_top",
            self.unfreeze_top,
            "0 (the whole backbone) or a positive number of blocks",
        )
        parse_checkpoint_every(self.checkpoint_every)
        _check(0.0 <= self.ema < 1.0, "train.ema", self.ema, "0 (off) or a momentum in (0, 1), e.g. 0.999")
        _check(
            self.gradient_accumulation_steps >= 1,
            "train.gradient_accumulation_steps",
            self.gradient_accumulation_steps,
            "1 (off) or a positive number of batches",
        )
        _check(self.clip_norm >= 0.0, "train.clip_norm", self.clip_norm, "0 (off) or a positive norm")
        if self.loop == "fast":
            for name, off in (("ema", 0.0), ("gradient_accumulation_steps", 1), ("clip_norm", 0.0)):
                _check(
                    getattr(self, name) == off,
                    f"train.{name}",
                    getattr(self, name),
                    f"{off} with train.loop = 'fast' (a Keras optimizer option, which the fast loop does not use)",
                )


def parse_checkpoint_every(text: str) -> tuple[int | None, float | None]:
    """``train.checkpoint_every`` as (steps, None) or (None, seconds): "500", "10min", "30s"."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(min|m|s|h)?\s*", text)
    if match:
        number, unit = float(match.group(1)), match.group(2)
        if unit is None and number.is_integer() and number > 0:
            return int(number), None
        if unit is not None and number > 0:
            return None, number * {"s": 1, "m": 60, "min": 60, "h": 3600}[unit]
    raise UserError(
        f"train.checkpoint_every = {text!r} is invalid: expected "
        "a number of steps (e.g. 500) or a time (e.g. 10min, 30s)"
    )


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DISTRIBUTIONS = ("auto", "none", "mirrored", "multi_worker_mirrored", "data_parallel")


@dataclass(frozen=True)
class Config:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        # The name becomes the run directory's and the Keras model's name: Keras refuses "/"
        # in model names, and a path separator would put the run outside --runs-dir.
        if not isinstance(self.name, str) or not RECIPE_NAME_PATTERN.fullmatch(self.name):
            raise UserError(
                f"name = {self.name!r} is invalid: expected letters, digits, '_', '-' or '.' (it "
                f"names the run directory and the model), e.g. {_suggested_name(self.name)!r}"
            )
        # Checks across sections: colour ops and ImageNet statistics need RGB images.
        if self.data.channels != 3:
            for operation in self.augment.ops:
                if operation.schema.needs_color:
                    raise UserError(
                        f"augment op {operation.name!r} needs colour images but data.channels "
                        f"= {self.data.channels}: set data.channels = 3 or remove the op"
                    )
            if self.augment.normalization == "imagenet":
                raise UserError(
                    "augment.normalization = 'imagenet' needs colour images but data.channels "
                    f"= {self.data.channels}: set data.channels = 3 or use 'unit'"
                )
        # A second training stage unfreezes a backbone: without one there is nothing to unfreeze.
        if (self.train.fine_tune_epochs or self.train.unfreeze_top) and not self.model.backbone:
            raise UserError(
                f"train.fine_tune_epochs = {self.train.fine_tune_epochs} and "
                f"train.unfreeze_top = {self.train.unfreeze_top} need model.backbone: "
                "set model.backbone (run:PATH, keras:NAME or hub:PRESET) or set both to 0"
            )

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["augment"]["ops"] = [operation.to_json() for operation in self.augment.ops]
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        sections = {}
        for section in dataclasses.fields(cls):
            if section.name == "name":
                continue
            section_type = _section_types()[section.name]
            raw = dict(values.get(section.name, {}))
            typed = {
                f.name: _coerce(raw[f.name], _field_type(section_type, f.name), f"{section.name}.{f.name}")
                for f in dataclasses.fields(section_type)
                if f.name in raw
            }
            sections[section.name] = section_type(**typed)
        return cls(name=values.get("name", "experiment"), **sections)

    def with_overrides(self, assignments: list[str]) -> Config:
        """Applies ``section.key=value`` strings, each parsed by the field's type."""
        # Sections are replaced together at the end, so that checks across sections
        # (Config.__post_init__) see every override, whatever their order.
        sections = {name: getattr(self, name) for name in _section_types()}
        for assignment in assignments:
            key, separator, text = assignment.partition("=")
            section_name, dot, field_name = key.strip().partition(".")
            if not separator or not dot:
                raise UserError(f"--set {assignment!r}: expected section.key=value, e.g. train.epochs=5")
            section_type = _section_types().get(section_name)
            if section_type is None:
                raise UserError(
                    f"--set {assignment!r}: unknown section {section_name!r}; "
                    f"sections are {', '.join(_section_types())}"
                )
            names = [f.name for f in dataclasses.fields(section_type)]
            if field_name not in names:
                raise UserError(
                    f"--set {assignment!r}: {section_name} has no field {field_name!r}; fields are {', '.join(names)}"
                )
            value = _parse_text(text.strip(), _field_type(section_type, field_name), key)
            sections[section_name] = dataclasses.replace(sections[section_name], **{field_name: value})
        return dataclasses.replace(self, **sections)

    def with_learning_rates_for_batch_size(self) -> Config:
        """The config training uses: train.learning_rate and fine_tune_learning_rate scaled from
        train.learning_rate_batch_size to data.batch_size (unchanged when it is 0 or equal)."""
        tuned_for = self.train.learning_rate_batch_size
        if not tuned_for or tuned_for == self.data.batch_size:
            return self
        factor = self.data.batch_size / tuned_for
        return dataclasses.replace(
            self,
            train=dataclasses.replace(
                self.train,
                learning_rate=self.train.learning_rate * factor,
                fine_tune_learning_rate=self.train.fine_tune_learning_rate * factor,
                learning_rate_batch_size=self.data.batch_size,
            ),
        )

    def learning_rate_scaling_line(self) -> str | None:
        """Said at the start of a run whose rates are scaled to its batch size, so that a rate
        set with --set is not taken for the one used."""
        tuned_for = self.train.learning_rate_batch_size
        if not tuned_for or tuned_for == self.data.batch_size:
            return None
        used = self.with_learning_rates_for_batch_size().train.learning_rate
        return (
            f"learning rate: {used:.6g}, scaled from train.learning_rate = {self.train.learning_rate:g} for "
            f"{tuned_for} images a step (train.learning_rate_batch_size) to data.batch_size = {self.data.batch_size}"
        )

    def smoke(self) -> Config:
        """The same experiment shrunk to a few hundred images and one epoch."""
        return dataclasses.replace(
            self,
            data=dataclasses.replace(
                self.data, max_train=256, max_eval=128, batch_size=min(self.data.batch_size, 64), cache="memory"
            ),
            train=dataclasses.replace(
                self.train, epochs=1, warmup_epochs=0.0, fine_tune_epochs=min(self.train.fine_tune_epochs, 1)
            ),
        )


RECIPE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _suggested_name(name) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "experiment"


def _section_types() -> dict[str, type]:
    return {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig, "train": TrainConfig}


def _field_type(section_type: type, name: str):
    return typing.get_type_hints(section_type)[name]


def _check(condition: bool, field_name: str, value, expected: str) -> None:
    if not condition:
        raise UserError(f"{field_name} = {value!r} is invalid: expected {expected}")


def _parse_text(text: str, annotation, key: str):
    """Parses a --set value written on the command line."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        items = [item.strip() for item in text.split(",") if item.strip()]
        return _coerce(items, annotation, key)
    return _coerce(text, annotation, key)


def _coerce(value, annotation, key: str):
    """Converts a value from JSON or text to the field's type, or refuses it by name."""
    origin = typing.get_origin(annotation)
    if annotation is AugmentOp:
        # {"name": ..., "params": {...}} from JSON, or name:key=value text from --set.
        return value if isinstance(value, AugmentOp) else AugmentOp.from_json(value)
    try:
        if origin is tuple:
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise TypeError
            item_types = typing.get_args(annotation)
            if len(item_types) == 2 and item_types[1] is Ellipsis:
                return tuple(_coerce(item, item_types[0], key) for item in value)
            if len(value) != len(item_types):
                raise TypeError
            return tuple(_coerce(item, item_type, key) for item, item_type in zip(value, item_types))
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise TypeError
        if annotation is int:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, float) and not value.is_integer():
                raise TypeError
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    type_name = getattr(annotation, "__name__", str(annotation))
    raise UserError(f"{key} = {value!r} has the wrong type: expected {type_name}")
