"""fedvlr-sim: a Ray-actor simulation engine for federated vision-language recommendation."""

__version__ = "0.1.0"
