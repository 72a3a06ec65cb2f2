"""Programmatic scene-graph data: random scenes, question programs, training shards and eval splits."""
