"""SHIM (issue 15 wave 2 removes it): old package of dlfp.stages.restore, dlfp.restorers and dlfp.photos."""
