"""Transfer learning, step 1 of 2: pre-train a feature extractor on five CIFAR-10 classes.

The source document's section 2.3: train a general feature extractor on a large source
dataset, then transfer it to a target dataset with few labels. This recipe trains the
source's CNN (``seed_cnn``) on all 25,000 training images of airplane, automobile, bird,
cat and deer of CIFAR-10. ``cifar5_transfer.py`` then fine-tunes it on the
other five classes with 100 labelled images per class, and ``cifar5_scratch.py`` trains the
same network on the same target data from random weights.

Command:   kcv fit recipes/cifar5_pretrain.py    (downloads CIFAR-10 when online)
           kcv fit recipes/cifar5_pretrain.py --data PATH/cifar10-jpeg.tar.gz    (the copy measured below)
Expected:  on the CIFAR-10 JPEG copy, test accuracy 0.816 on the five classes' 5,000 test images (seed 0).
Hardware:  2-core CPU, tensorflow backend: 2 min 9 s.
"""

from kerascv_app.config import SEED_PRESET, AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig

SOURCE_CLASSES = ("airplane", "automobile", "bird", "cat", "deer")


def get_config() -> Config:
    return Config(
        name="cifar5_pretrain",
        data=DataConfig(
            source="cifar10", classes=SOURCE_CLASSES, image_size=(32, 32), channels=3, batch_size=128, val_fraction=0.1
        ),
        augment=AugmentConfig(ops=SEED_PRESET, normalization="symmetric"),
        # fc1's 512 ReLU units are the features that transfer (the layer feeding fc2).
        model=ModelConfig(name="seed_cnn", hidden_units=512, dropout=0.3),
        train=TrainConfig(epochs=15, optimizer="adamw", learning_rate=2e-3, weight_decay=5e-4, schedule="cosine"),
    )
