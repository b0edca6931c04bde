"""mopt: optimize U-Net image-matting models for GPUs and prove they still compute the same mattes.

The package is a library of pipeline steps named ``<target>_from_<source>`` (``onnx_from_checkpoint``,
``simplified_onnx_from_onnx``, ...). ``optimize.cli`` only parses options and calls them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mopt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
