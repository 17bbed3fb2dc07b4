"""The ensemble as one Keras model: the members and the combiner behind one input.

    image -> member_0 -> softmax --+
          -> member_1 -> softmax --+-> combiner -> logits
          ...                      |
    (--tta flip: each member also sees the mirrored image; its two softmaxes are averaged)

    average / weighted   WeightedAverage(weights) -> ProbabilityLogits (log p)
    stacking, logistic   Concatenate -> log(max(p, 1e-6)) -> Dense(coef, intercept): its logits
    stacking, ridge      Concatenate -> log(max(p, 1e-6)) -> Dense(beta * coef, beta * intercept):
                         the decision scores times the fitted inverse temperature

Like a run's model it takes [0, 255] images and returns float32 logits, so a softmax of
its output is the ensemble's probability, whatever the combiner.
"""

from __future__ import annotations

import numpy as np

from kerascv_app.ensemble.combiners import FEATURE_FLOOR, Combination


def build_ensemble_model(
    member_models: list, combination: Combination, input_shape: tuple[int, int, int], num_classes: int, tta: str | None
):
    import keras
    from keras import layers

    from kerascv_app.ensemble.layers import HorizontalFlip, ProbabilityLogits, WeightedAverage

    if not combination.exportable:
        raise ValueError(f"the {combination.label} combiner has no Keras form")
    images = keras.Input(input_shape, name="image")
    mirrored = HorizontalFlip(dtype="float32", name="mirror")(images) if tta == "flip" else None
    member_probabilities = []
    for index, member_model in enumerate(member_models):
        # Members share layer names (conv1, fc1, ...): a unique name per nested model
        # keeps them apart in the saved file.
        member_model.name = f"member_{index}"
        probabilities = layers.Softmax(dtype="float32", name=f"member_{index}_probabilities")(member_model(images))
        if mirrored is not None:
            mirrored_probabilities = layers.Softmax(dtype="float32", name=f"member_{index}_mirrored_probabilities")(
                member_model(mirrored)
            )
            probabilities = WeightedAverage([0.5, 0.5], dtype="float32", name=f"member_{index}_tta")(
                [probabilities, mirrored_probabilities]
            )
        member_probabilities.append(probabilities)

    if combination.weights is not None:
        combined = WeightedAverage(combination.weights.tolist(), dtype="float32", name="combiner")(member_probabilities)
        logits = ProbabilityLogits(dtype="float32", name="logits")(combined)
    else:
        probabilities = layers.Concatenate(axis=-1, dtype="float32", name="member_probabilities")(member_probabilities)
        # The meta-learner's features: log(max(p, floor)), as combiners.stacking_features.
        features = ProbabilityLogits(floor=FEATURE_FLOOR, dtype="float32", name="member_log_probabilities")(
            probabilities
        )
        kernel, bias = combination.linear_parameters(num_classes)
        meta_learner = layers.Dense(num_classes, dtype="float32", trainable=False, name="logits")
        logits = meta_learner(features)
        meta_learner.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return keras.Model(images, logits, name=f"ensemble_{combination.label}".replace("-", "_"))
