"""`dlfp restore INPUT... -o OUT`: restoring people's own photos (inputs, the detect-warp-restore-paste pipeline, html)."""
