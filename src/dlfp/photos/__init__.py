"""`dlfp restore INPUT... -o OUT`: restoring people's own photos.

inputs (files, decoding, option checks), detection (the faces to restore), pipeline (detect -> warp -> restore
-> paste, batched across photos), summary and html (the run's outputs), provenance (the XMP label),
official_weights (the release files by name). May import libraries (dlfp.io, dlfp.faces, dlfp.restorers,
dlfp.models), never a stage, train/ or report/.
"""
