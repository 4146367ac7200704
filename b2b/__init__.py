"""b2b — Bytes to Beats: a distributed WGAN-GP trainer for multi-track piano-roll music.

The version is the installed package's (``b2b --version``, ``importlib.metadata.version("b2b")``)."""
