"""Checkpoints: the folder protocol, the Checkpointer that saves every Stateful part, inference loading."""
