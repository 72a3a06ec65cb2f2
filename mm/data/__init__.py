"""Streaming webdataset shards into padded, length-grouped or packed batches (see ``ShardDataModule``)."""
