"""`dlfp restore INPUT... -o OUT`: restoring people's own photos.

inputs (reading user images), pipeline (detect, warp, restore, paste back), html (the index page).
"""
