"""Writes a model directory's model as ``model.onnx``, with its class names in the file.

Runs in its own process under the TensorFlow backend whatever backend trained the model
(``python -m kerascv_app.export.onnx_write MODEL_DIR DESTINATION``), as the SavedModel
writer does, and converts with tf2onnx, the converter Keras's own ``format="onnx"`` uses
under TensorFlow (with Keras's patch for NumPy 2). The converted function is the
SavedModel's ``serving_default``: uint8 images in, the cast to float32 and the model (its
preprocessing inside it) and a softmax, ``probabilities`` and ``class_id`` out.

There is no ``class_name`` output: tf2onnx turns a captured string constant into an extra
graph input. The class names, image size and channels are in the model's
``metadata_props`` instead, which onnxruntime reads (``get_modelmeta().custom_metadata_map``),
so ``model.onnx`` alone is enough to predict.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import kerascv_app
from kerascv_app import faults
from kerascv_app.export import (
    IMAGES_INPUT,
    ONNX_CHANNELS_KEY,
    ONNX_CLASS_NAMES_KEY,
    ONNX_FILE,
    ONNX_IMAGE_SIZE_KEY,
)
from kerascv_app.model_dir import ModelDirectory

#: The batch dimension's name in the graph (tf2onnx names it unk__N).
BATCH_DIMENSION = "batch"


def classify_function(model, model_directory: ModelDirectory):
    """The tf.function converted: the same computation as the SavedModel's serving_default."""
    import tensorflow as tf

    height, width = model_directory.image_size
    signature = [tf.TensorSpec([None, height, width, model_directory.channels], tf.uint8, name=IMAGES_INPUT)]

    @tf.function(input_signature=signature)
    def classify(images):
        # The model's preprocessing is inside it: it takes [0, 255] values as float32.
        logits = tf.cast(model(tf.cast(images, tf.float32), training=False), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {"probabilities": probabilities, "class_id": class_id}

    return classify, signature


def convert_to_onnx(model, model_directory: ModelDirectory):
    """The model as an ONNX ModelProto, named inputs and outputs, its metadata set."""
    import tensorflow as tf
    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    patch_tf2onnx()  # tf2onnx 1.17 still uses np.object and friends, gone in NumPy 2.
    import tf2onnx

    register_erfc()
    classify, signature = classify_function(model, model_directory)
    model_proto, _ = tf2onnx.convert.from_function(classify, signature, output_path=None)
    inline_captured_constants(model_proto, classify.get_concrete_function())
    name_batch_dimension(model_proto)
    set_metadata(model_proto, model_directory, tf.__version__)
    return model_proto


def inline_captured_constants(model_proto, concrete_function) -> None:
    """Makes the constants the traced function captured part of the graph, not inputs of it.

    tf2onnx freezes captured variables but turns a captured constant tensor into one more
    graph input (KerasHub's ViT captures its position ids so), which no caller would feed.
    Each such input becomes an initializer holding the captured value.
    """
    import tensorflow as tf
    from onnx import numpy_helper

    captured_values = concrete_function.captured_inputs
    placeholders = concrete_function.inputs[len(concrete_function.inputs) - len(captured_values) :]
    constants = {
        placeholder.name: value.numpy()
        for placeholder, value in zip(placeholders, captured_values)
        if value.dtype != tf.resource
    }
    graph = model_proto.graph
    for graph_input in [item for item in graph.input if item.name in constants]:
        graph.input.remove(graph_input)
        graph.initializer.append(numpy_helper.from_array(constants[graph_input.name], graph_input.name))


def register_erfc() -> None:
    """Teaches tf2onnx TensorFlow's Erfc, as 1 - Erf (ONNX has Erf only).

    Keras's exact GELU (``approximate=False``, the one ViT, DeiT and DINOv2 use) is
    ``0.5 * x * erfc(-x / sqrt(2))`` under TensorFlow, and tf2onnx 1.17 has no handler for
    Erfc: without this, such a model fails the ONNX checker ("Bad node spec ... Erfc").
    """
    import numpy as np
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:  # noqa: F841 - registered by the decorator
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            node.type = "Erf"
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            complement = ctx.insert_new_node_on_output(
                "Sub", node.output[0], name=utils.make_name(f"{node.name}_complement")
            )
            ctx.replace_inputs(complement, [one.output[0], node.output[0]])


def name_batch_dimension(model_proto) -> None:
    """Calls the first dimension of the input and of both outputs "batch", for readers of the graph."""
    for value in [*model_proto.graph.input, *model_proto.graph.output]:
        dimension = value.type.tensor_type.shape.dim[0]
        if not dimension.HasField("dim_value"):
            dimension.dim_param = BATCH_DIMENSION


def set_metadata(model_proto, model_directory: ModelDirectory, tensorflow_version: str) -> None:
    from onnx import helper

    helper.set_model_props(
        model_proto,
        {
            ONNX_CLASS_NAMES_KEY: json.dumps(list(model_directory.class_names)),
            ONNX_IMAGE_SIZE_KEY: json.dumps(list(model_directory.image_size)),
            ONNX_CHANNELS_KEY: str(model_directory.channels),
            "kcv_source_kind": model_directory.kind,
            "kcv_trained_backend": model_directory.backend,
            "kcv_version": kerascv_app.__version__,
            "kcv_tensorflow_version": tensorflow_version,
        },
    )


def write_onnx_model(model_directory: ModelDirectory, destination: Path) -> None:
    """Loads the model under TensorFlow and writes ``destination/model.onnx`` (``destination`` must not exist)."""
    import onnx

    from kerascv_app.export.savedmodel import _perturb_first_weight, load_float32_model

    model = load_float32_model(model_directory)
    if faults.export_fault_is("perturb_weights"):
        _perturb_first_weight(model)
    model_proto = convert_to_onnx(model, model_directory)
    onnx.checker.check_model(model_proto)
    destination.mkdir()
    onnx.save(model_proto, str(destination / ONNX_FILE))


def main(arguments: list[str]) -> int:
    from kerascv_app.export.savedmodel import writer_main

    return writer_main(write_onnx_model, arguments)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
