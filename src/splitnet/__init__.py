"""SplitNet: learn semantic class/feature groups and split a Wide ResNet into disjoint branches."""

__version__ = "0.1.0"
