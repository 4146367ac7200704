"""Data: music sources read into songs, windows cut from them, WebDataset shards built and read."""
