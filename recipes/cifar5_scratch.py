"""Transfer learning's control: the target of cifar5_transfer.py from random weights.

The same target data (dog, frog, horse, ship, truck; 100 training and 25 validation images
per class; all 5,000 test images), the same augmentation and the same number of epochs as
``cifar5_transfer.py`` (both of its stages), and the same network as ``cifar5_pretrain.py``,
but no pre-training: what the pre-trained features are worth is the difference.

Command:   kcv fit recipes/cifar5_scratch.py
Expected:  test accuracy 0.719 (0.724, 0.712, 0.722 with --seed 0, 1, 2) against 0.790 for
           cifar5_transfer.py (docs/transfer.md).
Hardware:  2-core CPU, tensorflow backend: about 25 s.
"""

import dataclasses
from pathlib import Path

from kerascv_app.config import Config
from kerascv_app.recipe import load_recipe


def get_config() -> Config:
    pretrain, _ = load_recipe(Path(__file__).with_name("cifar5_pretrain.py"))
    transfer, _ = load_recipe(Path(__file__).with_name("cifar5_transfer.py"))
    return dataclasses.replace(
        transfer,
        name="cifar5_scratch",
        augment=dataclasses.replace(transfer.augment, normalization=pretrain.augment.normalization),
        model=pretrain.model,
        train=dataclasses.replace(
            pretrain.train,
            epochs=transfer.train.epochs + transfer.train.fine_tune_epochs,
            fine_tune_epochs=0,
        ),
    )
