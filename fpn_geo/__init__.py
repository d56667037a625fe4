"""fpn-geo: find buildings in large GeoTIFFs with an FPN-ResNet segmenter."""

__version__ = "0.1.0"
