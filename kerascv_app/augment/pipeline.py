"""Augmentation in tf.data: the recipe's ops mapped over whole batches on the CPU.

Whole-batch ops are vectorised: one op call per batch instead of per image, which is
what makes the CPU pipeline fast. Randomness is stateless: each batch gets its own seed
from ``tf.data.Dataset.random(seed)``, so the same seed and order give the same augmented
batches, and parallel map calls share no random state. The ops are the same
:class:`~kerascv_app.augment.layer.Augmentation` layer that runs inside the model for
``placement = "device"``, running TensorFlow ops here whatever the Keras backend.
"""

from __future__ import annotations

from kerascv_app.augment.spec import AugmentOp


def augment_batches(dataset, operations: tuple[AugmentOp, ...], seed: int, channels: int):
    """Maps ``operations`` over a dataset of (uint8 images, one-hot labels) batches.

    Images come back as uint8 again (rounded): the pipeline hands the model what it would
    hand it without augmentation, a quarter of the bytes of float32.
    """
    import tensorflow as tf

    if not operations:
        return dataset
    # A new stream of seeds each epoch, so an image position gets fresh augmentation.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return augment_seeded_batches(
        tf.data.Dataset.zip((dataset, seeds)).map(lambda batch, batch_seed: (*batch, batch_seed)),
        operations,
        seed,
        channels,
    )


def augment_seeded_batches(dataset, operations: tuple[AugmentOp, ...], seed: int, channels: int):
    """Like :func:`augment_batches` for a dataset of (images, labels, batch seed) whose int64
    [2] seeds the caller chose (a resumed run replays them from (seed, epoch, batch))."""
    import tensorflow as tf

    if not operations:
        return dataset.map(lambda images, labels, batch_seed: (images, labels))
    augmenter = pipeline_augmenter(operations, seed, channels)

    # Plain graph code with no Python control flow on tensors: autograph has nothing to
    # convert, and converting Keras layer methods once mixed up two methods in a long test run.
    @tf.autograph.experimental.do_not_convert
    def augment(images, labels, batch_seed):
        images, labels = augmenter.augment_batch(images, labels, batch_seed)
        return to_uint8(images), labels

    return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)


def pipeline_augmenter(operations: tuple[AugmentOp, ...], seed: int, channels: int):
    from kerascv_app.augment.layer import Augmentation

    return Augmentation(
        [operation.to_json() for operation in operations], seed=seed, channels=channels, name="pipeline_augmentation"
    )


def to_uint8(images):
    import tensorflow as tf

    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)
