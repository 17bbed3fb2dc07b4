"""A stronger CIFAR-10 recipe: ResNet-20 with the standard training tricks.

CIFAR-style ResNet-20 (He et al. 2016), SGD with nesterov momentum, linear warm-up then
cosine decay, label smoothing 0.1 and decoupled weight decay, flip + pad-4 crop.
The learning rate is derived from the batch size (0.1 per 128 images), not typed.

Command:   kcv fit recipes/cifar10_resnet.py    (downloads CIFAR-10 when online)
           kcv fit recipes/cifar10_resnet.py --data PATH/cifar10-jpeg.tar.gz    (a local copy, any format)
Expected:  test accuracy 0.8458 (top-5 0.9914) after the 30 epochs, on the CIFAR-10 JPEG copy
           (tensorflow backend; docs/benchmarks.md).
Hardware:  a 2-core CPU, no GPU: about 70 s an epoch, 35 min 35 s in all.
"""

from kerascv_app.config import SEED_PRESET, AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig

BATCH_SIZE = 128
BASE_LEARNING_RATE = 0.1  # per 128 images; scaled linearly with the batch size


def get_config() -> Config:
    return Config(
        name="cifar10_resnet",
        data=DataConfig(source="cifar10", image_size=(32, 32), channels=3, batch_size=BATCH_SIZE, val_fraction=0.1),
        augment=AugmentConfig(ops=SEED_PRESET, normalization="symmetric"),
        model=ModelConfig(name="resnet", depth=20, width=16),
        train=TrainConfig(
            epochs=30,
            optimizer="sgd",
            learning_rate=BASE_LEARNING_RATE * BATCH_SIZE / 128,
            momentum=0.9,
            nesterov=True,
            weight_decay=5e-4,
            schedule="cosine",
            warmup_epochs=2,
            label_smoothing=0.1,
            keep_best=True,
        ),
    )
