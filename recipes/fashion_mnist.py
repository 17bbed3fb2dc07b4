"""Fashion-MNIST with the source document's CNN, dropout and a one-cycle schedule.

Command:   kcv fit recipes/fashion_mnist.py
           (files from --data-dir, /usr/share/datasets/fashion-mnist after
           `apt-get install dataset-fashion-mnist`, or the Keras cache)
Expected:  test accuracy about 0.92 after 10 epochs.
Hardware:  2-core CPU (no GPU), tensorflow backend; see docs/benchmarks.md for the run.
"""

from kerascv_app.config import AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig, op


def get_config() -> Config:
    return Config(
        name="fashion_mnist",
        data=DataConfig(source="fashion_mnist", image_size=(28, 28), channels=1, batch_size=128, val_fraction=0.1),
        # Garments are left-right symmetric, so mirroring adds real variety; shifts are small.
        augment=AugmentConfig(ops=(op("flip"), op("pad_crop", padding=2)), normalization="unit"),
        model=ModelConfig(name="seed_cnn", dropout=0.3, hidden_units=256),
        train=TrainConfig(epochs=10, optimizer="adamw", learning_rate=3e-3, weight_decay=5e-4, schedule="onecycle"),
    )
