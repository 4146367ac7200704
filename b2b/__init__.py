"""b2b — Bytes to Beats: a distributed WGAN-GP trainer for multi-track piano-roll music."""

__version__ = "0.1.0"
