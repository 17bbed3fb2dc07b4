"""Transfer learning, step 2 of 2: fine-tune the pre-trained network on five other classes.

The target: dog, frog, horse, ship and truck of CIFAR-10 (figures on the JPEG copy), with a budget of
125 labelled training images per class (100 to train, 25 to validate), evaluated on all
5,000 of their test images. The backbone is the newest finished ``cifar5_pretrain`` run in
the runs folder, cut at fc1 (the layer feeding its classifier), with its own normalisation.
A new 5-way classifier is trained for 15 epochs with the backbone frozen (stage 1), then
everything for 30 epochs at a 3 times lower learning rate (stage 2).
``cifar5_scratch.py`` is the same data and budget from random weights.

Command:   kcv fit recipes/cifar5_pretrain.py && kcv fit recipes/cifar5_transfer.py
           (another pre-trained run: --set model.backbone=run:runs/cifar5_pretrain-...)
Own photos (any size, a folder per class): one command, the same pre-trained run:
           kcv fit recipes/cifar5_transfer.py --data PATH --set data.classes= --set data.labelled_per_class=0
Expected:  test accuracy 0.790 (0.791, 0.788, 0.790 with --seed 0, 1, 2) against 0.719 from
           scratch (cifar5_scratch.py); the head on frozen features alone (stage 1) reaches 0.697.
Hardware:  2-core CPU, tensorflow backend: about 25 s after the pre-training.
"""

from pathlib import Path

from kerascv_app.config import SEED_PRESET, AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig
from kerascv_app.recipe import load_recipe

TARGET_CLASSES = ("dog", "frog", "horse", "ship", "truck")
LABELLED_PER_CLASS = 125  # 100 training + 25 validation images per class (val_fraction 0.2)


def get_config() -> Config:
    pretrain, _ = load_recipe(Path(__file__).with_name("cifar5_pretrain.py"))
    return Config(
        name="cifar5_transfer",
        data=DataConfig(
            source=pretrain.data.source,
            classes=TARGET_CLASSES,
            labelled_per_class=LABELLED_PER_CLASS,
            val_fraction=0.2,
            image_size=(32, 32),
            channels=3,
            batch_size=32,
        ),
        # The backbone's own normalisation is applied: augment.normalization is not used.
        augment=AugmentConfig(ops=SEED_PRESET),
        model=ModelConfig(backbone="run:latest:cifar5_pretrain", dropout=pretrain.model.dropout),
        train=TrainConfig(
            epochs=15,
            optimizer="adamw",
            learning_rate=3e-3,
            weight_decay=5e-4,
            schedule="cosine",
            fine_tune_epochs=30,
            fine_tune_learning_rate=1e-3,
        ),
    )
