"""A backbone's blocks: what ``train.unfreeze_top = N`` counts, from the output down.

A block is found from the graph, not from layer names, so the same rule holds for a run's
model and for any keras.applications model:

1. Cut the layers (in topological order) wherever the whole computation so far flows
   through a single tensor. In a residual network every residual block lies between two
   such cuts, because its shortcut keeps the block's input alive until the final add; in a
   plain chain every layer is followed by a cut.
2. A piece that contains a convolution or dense layer starts a new block; pieces without
   one (BatchNorm, activation, pooling, dropout, flatten) join the block before them, and
   weight-free preprocessing at the input joins the first block.

So the source's CNN has the blocks conv1+pool1, conv2+pool2, conv3+pool3+flatten and fc1; a
CIFAR ResNet has its stem and then one block per residual block; MobileNetV3 and
EfficientNet have their residual blocks (an inverted-residual block without a shortcut
splits into its expansion, depthwise, squeeze-excite and projection parts).
"""

from __future__ import annotations

import keras

# Layers whose kernels make a block: a piece of the graph without one is not a block of its own.
BLOCK_LAYER_TYPES = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
    keras.layers.EinsumDense,
)


def backbone_blocks(backbone: keras.Model) -> list[list[keras.layers.Layer]]:
    """The backbone's layers grouped into blocks, from input to output."""
    blocks: list[list[keras.layers.Layer]] = []
    leading: list[keras.layers.Layer] = []
    for piece in _single_tensor_pieces(backbone):
        if any(isinstance(layer, BLOCK_LAYER_TYPES) for layer in piece):
            blocks.append(leading + piece)
            leading = []
        elif blocks:
            blocks[-1].extend(piece)
        else:
            leading.extend(piece)
    if leading:
        blocks.append(leading)
    return blocks


def _single_tensor_pieces(backbone: keras.Model) -> list[list[keras.layers.Layer]]:
    """Consecutive layers, cut wherever only one tensor carries the computation onward."""
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    last_use = {}
    for position, layer in enumerate(layers):
        for tensor in keras.tree.flatten(layer.input):
            last_use[id(tensor)] = position
    # Tensors produced so far and still needed by a later layer.
    alive = {id(tensor) for tensor in backbone.inputs if id(tensor) in last_use}
    pieces, piece = [], []
    for position, layer in enumerate(layers):
        piece.append(layer)
        for tensor in keras.tree.flatten(layer.input):
            if last_use[id(tensor)] == position:
                alive.discard(id(tensor))
        for tensor in keras.tree.flatten(layer.output):
            if id(tensor) in last_use:
                alive.add(id(tensor))
        if len(alive) <= 1:
            pieces.append(piece)
            piece = []
    if piece:
        pieces.append(piece)
    return pieces
