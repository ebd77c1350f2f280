"""WebDataset shards: the index and record format, local reading and writing, and streaming from object storage."""
