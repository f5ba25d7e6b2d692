"""MACK: multimodal aligned conceptual knowledge for unpaired image-text matching."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
