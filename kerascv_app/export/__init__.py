"""SavedModels for TF Serving (``kcv export``) and predictions from any model (``kcv predict``).

An export is made in three processes, so that it is the same from every backend:

    kcv export (the training backend, CPU)   loads model.keras, predicts a sample batch
      -> python -m kerascv_app.export.savedmodel   (KERAS_BACKEND=tensorflow) writes the SavedModel
      -> python -m kerascv_app.export.verify       (TensorFlow, keras blocked) reloads and compares
      -> export_report.json, then one rename into  <base>/<name>/<version>/

    <base>/<name>/<version>/
      saved_model.pb, fingerprint.pb, variables/
      assets/class_names.txt    one class name a line, in class_id order
      export_report.json        source, backends, versions, signatures, parity with the Keras model

Signatures (outputs of both: ``probabilities`` float32 [batch, classes], ``class_id`` int64
[batch], ``class_name`` string [batch]):

    serving_default   images: uint8 [batch, height, width, channels] at the model's size
                      (channels is 3 for RGB models and 1 for grayscale ones such as digits)
    serving_bytes     image_bytes: string [batch] of encoded JPEG/PNG/BMP/GIF of any size,
                      decoded and resized inside exactly as in training

``kcv export --format onnx`` makes the same three processes, with other steps:

      -> python -m kerascv_app.export.onnx_write    (KERAS_BACKEND=tensorflow, tf2onnx) writes model.onnx
      -> python -m kerascv_app.export.onnx_verify   (onnxruntime; tensorflow and keras blocked) reloads and compares
      -> export_report.json, then one rename into  <base>/onnx/<name>/<version>/

    <base>/onnx/<name>/<version>/     (beside, never inside, the folders TF Serving polls)
      model.onnx                images: uint8 [batch, height, width, channels] -> probabilities
                                float32 [batch, classes], class_id int64 [batch]; the class
                                names, image size and channels are in its metadata_props
      export_report.json        as for the SavedModel, parity at batch sizes 1 and 8

The SavedModel computes in float32 whatever precision trained the model (see
:func:`kerascv_app.export.savedmodel.load_float32_model`), and the parity check compares
it on CPU with the Keras model, also in float32, on the backend that trained it.

This package's ``__init__`` imports nothing, so that the verifying process can import the
names below without importing TensorFlow or Keras.
"""

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
SIGNATURE_NAMES = (SERVING_DEFAULT, SERVING_BYTES)
IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
OUTPUT_NAMES = ("probabilities", "class_id", "class_name")

#: kcv export --format: the SavedModel (the default) or ONNX.
FORMATS = ("savedmodel", "onnx")
ONNX_FILE = "model.onnx"
#: The ONNX versions live in <base>/onnx/<name>/<version>/, so that a TF Serving model base
#: path (<base>/<name>/<version>/) never holds a version it cannot load.
ONNX_FOLDER = "onnx"
ONNX_OUTPUT_NAMES = ("probabilities", "class_id")
#: Keys of model.onnx's metadata_props (strings; the lists as JSON): enough to predict from
#: the file alone.
ONNX_CLASS_NAMES_KEY = "kcv_class_names"
ONNX_IMAGE_SIZE_KEY = "kcv_image_size"
ONNX_CHANNELS_KEY = "kcv_channels"
#: Batch sizes the ONNX verification runs: the dynamic batch dimension must take both.
ONNX_VERIFIED_BATCH_SIZES = (1, 8)
ONNX_INSTALL = 'pip install -e ".[onnx]"'

CLASS_NAMES_ASSET = "class_names.txt"
REPORT_FILE = "export_report.json"

#: Largest difference allowed between the SavedModel's and the Keras model's probabilities.
PARITY_TOLERANCE = 1e-4
