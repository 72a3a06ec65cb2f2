"""data_prep (`mm-prep`): datasets -> validated, resumable webdataset shards; synthetic scene-graph
data with held-out eval splits; shard inspection. Formats and rules: data_prep/README.md."""
