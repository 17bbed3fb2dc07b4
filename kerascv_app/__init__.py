"""kerascv_app: image classification on large datasets with Keras 3, on any backend.

Importing this package does not import keras: the backend must be chosen first
(see :mod:`kerascv_app.backend`).
"""

__version__ = "0.1.0"
