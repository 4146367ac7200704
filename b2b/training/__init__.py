"""Training: the trainer and its loop, losses, networks under DDP or ZeRO, the monitor and trackers."""
