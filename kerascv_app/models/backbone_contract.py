"""What every backbone loader returns and what the transfer model finds in it.

kerascv_app/models/backbones.py (run:, keras:) and kerascv_app/models/hub.py (hub:) both
build a Keras model named ``backbone`` whose input is named ``backbone_image``;
kerascv_app/models/transfer.py finds it by that name in a built model.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKBONE_NAME = "backbone"
BACKBONE_INPUT_NAME = "backbone_image"


@dataclass(frozen=True)
class Backbone:
    model: object  # keras.Model named "backbone": images in [0, 255] -> features
    image_size: tuple[int, int]
    channels: int
