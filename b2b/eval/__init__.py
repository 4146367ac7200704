"""Looking at a generator: music metrics, diversity, the real reference, rendering rolls to files."""
