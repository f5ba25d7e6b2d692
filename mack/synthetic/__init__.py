"""A synthetic concept world written in the real public file formats (the embedded default data).

`generate(root, seed=0, size="small", dim=256)` writes a Visual Genome-style knowledge source with
bottom-up region features, and two target datasets ("f30k_like", "coco_like") in the SCAN precomp
layout. docs/synthetic-world.md describes the generative model.
"""

from mack.synthetic.generator import SIZES, WorldSize, generate
from mack.synthetic.world import WorldParams

__all__ = ["SIZES", "WorldParams", "WorldSize", "generate"]
