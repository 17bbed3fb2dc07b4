"""Fine-tune a KerasHub backbone on your own photos: a folder per class, images of any size.

The backbone is a KerasHub preset (ResNet-18 pre-trained on ImageNet here; any image backbone
KerasHub has: EfficientNet, MobileNet, DenseNet, ViT, DeiT, Swin, CSPNet, DINOv2, ...). Its own
image converter is the preprocessing (resize to its size, then its scale and mean/std), applied
once inside the model, so prediction and export apply it too. A new classifier is trained with
the backbone frozen (stage 1), then the top two blocks with it at a lower rate (stage 2).

Needs:     pip install -e ".[hub]"                       (KerasHub)
Online:    kcv fit recipes/hub_transfer.py --data ~/photos
           (KerasHub downloads the preset from Kaggle once and keeps it in ~/.cache/kagglehub;
           another preset: --set model.backbone=hub:efficientnet_b0_ra_imagenet)
Offline:   copy a preset folder (from the cache, or one that save_to_preset wrote), then
           kcv fit recipes/hub_transfer.py --data ~/photos --set model.backbone=hub:/path/to/resnet_18_imagenet
Layout:    ~/photos/<class name>/<image>.jpg (or train/<class>/ and test/<class>/); 10% of the
           images are held out for validation and 10% for the test.
Expected:  depends on your photos; not measured (tests/test_hub.py runs this recipe on a folder of
           digits with a tiny preset).
Hardware:  a ResNet-18 at 224x224 wants a GPU (--precision mixed_float16); not timed here.
"""

from kerascv_app.config import AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig, op


def get_config() -> Config:
    return Config(
        name="hub_transfer",
        # "folder:" is the --data (or --data-dir) folder; images are resized to the preset's 224x224.
        data=DataConfig(
            source="folder:", image_size=(224, 224), channels=3, batch_size=32, val_fraction=0.1, test_fraction=0.1
        ),
        # Photos: mirrored, cropped and lit differently. The backbone's own preprocessing is
        # applied, so augment.normalization is not used.
        augment=AugmentConfig(
            ops=(
                op("flip"),
                op("resized_crop", scale=(0.5, 1.0)),
                op("brightness", factor=0.1),
                op("contrast", factor=0.1),
            )
        ),
        model=ModelConfig(backbone="hub:resnet_18_imagenet", dropout=0.2),
        train=TrainConfig(
            epochs=5,
            optimizer="adamw",
            learning_rate=1e-3,
            weight_decay=1e-4,
            schedule="cosine",
            fine_tune_epochs=5,
            fine_tune_learning_rate=1e-4,
            unfreeze_top=2,
        ),
    )
