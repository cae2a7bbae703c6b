"""curvlab: train, track and measure the curvature of neural networks."""

__version__ = "0.1.0"
