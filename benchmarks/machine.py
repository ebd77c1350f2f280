"""Describe the machine a benchmark ran on, so figures are never separated from their context."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def machine_description() -> dict[str, object]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name in ("torch", "numpy", "opencv-python-headless", "albumentations", "webdataset", "dvc", "snakemake",
                 "dlib-bin"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu, "cores_visible": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}
