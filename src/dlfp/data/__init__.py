"""SHIMS (issue 15 wave 2 removes them): the old import paths of the data stages and their libraries, now in
dlfp.stages (acquire, align, shard, degrade), dlfp.shards, dlfp.faces, dlfp.degradation and dlfp.io.download."""
