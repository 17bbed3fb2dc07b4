"""airbench94 in kcv: record-class CIFAR-10 training from the general toolkit.

The method of airbench (KellerJordan/cifar10-airbench, airbench94.py: 94.0% in 3.83 s on
an A100) through kcv's fast loop (train.loop = "fast", kerascv_app/train/fast.py): the
images held on the device as uint8, whole-batch alternating flips and 2-pixel shifts on
the device, airbench's net (model "airbench_net": a frozen patch-whitening first layer,
identity-initialised convolutions, BatchNorm, GELU, logits x 1/9), label smoothing 0.2,
nesterov SGD with BatchNorm biases at 64x the rate, a linear warm-up then linear decay,
lookahead weight averaging, and test-time augmentation (flip and one-pixel shifts) for
the final evaluation. No TensorFlow is needed on this path.

Command:   kcv fit recipes/cifar10_fast.py --backend jax    (downloads CIFAR-10 when online)
           kcv fit recipes/cifar10_fast.py --backend jax --data PATH/cifar10-jpeg.tar.gz
           (PATH: a local copy; the figures below are measured on a JPEG copy, one folder per class)
           kcv evaluate runs/cifar10_fast-<timestamp> --tta
           bash bench/gpu_cifar10_fast.sh          (5 seeds on a GPU: mean and spread)
Expected:  the target is airbench94's own result on the CIFAR-10 JPEG copy: 90.6% test
           accuracy with test-time augmentation (mean of 5 runs) in about 2.0 s of GPU time
           on an H200, within 1.5x of that time (3.0 s of train_seconds in metrics.json).
           NOT YET MEASURED on a GPU: the figures go in docs/benchmarks.md once
           bench/gpu_cifar10_fast.sh has run. On 2 CPU cores an epoch takes minutes (see
           docs/benchmarks.md), so run it on a GPU.
Hardware:  one NVIDIA GPU (H100 or H200) with JAX; any backend works, JAX is the fast one.
"""

from kerascv_app.config import AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig, op

BATCH_SIZE = 1024  # images per step; the last partial batch of an epoch is dropped
EPOCHS = 10  # airbench: 9.9
MOMENTUM = 0.85  # nesterov
# airbench's hyperparameters, decoupled from the batch size and momentum: per 1,024 images,
# in units where nesterov momentum's gain on a constant gradient, 1 + 1 / (1 - momentum),
# is divided out, so that each can be tuned alone.
LEARNING_RATE_PER_1024 = 11.5
WEIGHT_DECAY_PER_1024 = 0.0153
MOMENTUM_GAIN = 1 + 1 / (1 - MOMENTUM)
# The rate for the batch's mean loss: 1.5 here.
LEARNING_RATE = LEARNING_RATE_PER_1024 * (BATCH_SIZE / 1024) / MOMENTUM_GAIN
# Added to the gradient (PyTorch's SGD weight_decay), so each step shrinks the weights by
# LEARNING_RATE * WEIGHT_DECAY (0.002 at the peak rate), as airbench's do.
WEIGHT_DECAY = WEIGHT_DECAY_PER_1024 / LEARNING_RATE_PER_1024
# The rate rises linearly from 0.2x to its peak over the first 23% of the steps, then falls
# linearly to 0.07x (train.schedule = "linear").
WARMUP_EPOCHS = 0.23 * EPOCHS


def get_config() -> Config:
    return Config(
        name="cifar10_fast",
        data=DataConfig(
            source="cifar10",
            image_size=(32, 32),
            channels=3,
            batch_size=BATCH_SIZE,
            # airbench trains on all 50,000 training images and reports the test split.
            val_fraction=0.0,
        ),
        augment=AugmentConfig(
            # The fast loop applies these on the device: flips alternate between epochs, and
            # each image is shifted by up to 2 pixels with the edge filled by reflection.
            ops=(op("flip"), op("pad_crop", padding=2, fill="reflect")),
            placement="device",
            normalization="symmetric",
        ),
        model=ModelConfig(name="airbench_net", width=64),  # widths 64, 256, 256
        train=TrainConfig(
            loop="fast",
            epochs=EPOCHS,
            optimizer="sgd",
            learning_rate=LEARNING_RATE,
            # The rate is for BATCH_SIZE: with --set data.batch_size=N it is scaled by N / 1024.
            learning_rate_batch_size=BATCH_SIZE,
            momentum=MOMENTUM,
            nesterov=True,
            weight_decay=WEIGHT_DECAY,
            schedule="linear",
            warmup_epochs=WARMUP_EPOCHS,
            label_smoothing=0.2,
            bias_learning_rate_scale=64.0,
            # Lookahead from the fourth epoch: every 5 steps the weights move to an average
            # decaying by 0.95 per step (less early on, see kerascv_app/train/fast_steps.py).
            lookahead_decay=0.95,
            lookahead_start_epoch=3,
            # The whitening layer's bias learns during the first 3 epochs only.
            whitening_bias_epochs=3,
            # airbench computes in half precision with BatchNorm in float32; Keras's
            # mixed_bfloat16 does the same (float32 variables, BatchNorm and logits).
            precision="mixed_bfloat16",
        ),
    )
