"""fpn-geo: find buildings in large GeoTIFFs with an FPN-ResNet segmenter."""

from pathlib import Path

__version__ = "0.1.0"

# The checkout the package runs from: models/, configs/ and data/ live beside it.
REPO_ROOT = Path(__file__).resolve().parent.parent
