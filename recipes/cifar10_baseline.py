"""The source document's CIFAR-10 example, repaired, in Keras.

The source's PyTorch script, kept as it was except for its two defects:
  1. it pools twice but flattens 4x4 maps; a third pooling after conv3 fixes it
     (model.extra_pooling, on by default in seed_cnn);
  2. it evaluates on randomly flipped and cropped test images; here the test set is clean
     (augmentation runs only on training batches).
Everything else is the source's: conv 32-64-64, fc 512, flip + zero-pad-4 crop,
Normalize((0.5,)*3, (0.5,)*3), SGD lr 0.001 momentum 0.9, batch 128, 10 epochs.
10% of the training images are held out for validation (the source had none).

Command:   kcv fit recipes/cifar10_baseline.py    (downloads CIFAR-10 when online)
           kcv fit recipes/cifar10_baseline.py --data PATH/cifar10-jpeg.tar.gz    (a local copy, any format)
Expected:  test accuracy 0.525 on the CIFAR-10 JPEG copy (the source's own script: 0.47): the
           source's learning rate is far too small for 10 epochs (--set train.learning_rate=0.01 does much better).
Hardware:  a 2-core CPU; see docs/benchmarks.md and bench/seed_vs_kcv.py.
"""

from kerascv_app.config import SEED_PRESET, AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="cifar10_baseline",
        data=DataConfig(source="cifar10", image_size=(32, 32), channels=3, batch_size=128, val_fraction=0.1),
        augment=AugmentConfig(ops=SEED_PRESET, normalization="symmetric"),
        model=ModelConfig(name="seed_cnn", hidden_units=512),
        train=TrainConfig(epochs=10, optimizer="sgd", learning_rate=0.001, momentum=0.9),
    )
