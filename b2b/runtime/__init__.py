"""The process around a run: ranks, stop signals, the run lock, the stall watchdog, hardware figures."""
