"""Data stages: acquire, align, shard, degrade."""
