"""The real faces of ../shared/faces (never committed) and the mini project the stage tests build from them.

A mini project is an align-stage folder of a few real faces (images/<id>.png + meta.jsonl), put through the real
shard and degrade stages, and the restore stage when asked. conftest.py builds one, `mini_project`, once per test
session; a test that needs other faces, sizes, splits or stages calls `build` (or `write_aligned`) with its own
arguments instead of copying the setup. Loaded by path from conftest.py (tests/ is not a package) as
`_dlfp_test_faces`; the heavy imports (cv2, dlib, the stages) sit inside the functions so that conftest stays light.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py before this file

if TYPE_CHECKING:
    import numpy as np

    from dlfp.faces.landmarks import FaceLandmarker
    from dlfp.params import Params

REPO = Path(__file__).resolve().parents[1]
SHARED_FACES = REPO.parent / "shared" / "faces"
FACES = SHARED_FACES / "aligned_hq"  # 1,140 aligned faces: ffhq256_*.jpg, some *.png
WILD = SHARED_FACES / "wild"         # unaligned photos
FFHQ_JPG = "ffhq256_*.jpg"

# The shared mini project (conftest.py `mini_project`): every face in the test split, both presets, three faces
# a shard (so five faces make two shards), the restorers of params.yaml with gfpgan "not run" (no weights).
MINI_COUNT = 5
MINI_SIZE = 128
MINI_PRESETS = ("mild", "severe")
MINI_FRACTIONS = {"train": 0.0, "val": 0.0, "test": 1.0}
MINI_SAMPLES_PER_SHARD = 3


def face_paths(count: int, pattern: str = FFHQ_JPG) -> list[Path]:
    """The first `count` shared faces matching `pattern`, by name; a missing prerequisite when there are fewer."""
    paths = sorted(FACES.glob(pattern))[:count]
    if len(paths) < count:
        prereq.missing(f"fewer than {count} faces {pattern} in {FACES}")
    return paths


def resized(image: np.ndarray, size: int) -> np.ndarray:
    """A face at size x size px, area-averaged as the align stage's output would be."""
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def landmarks_at(landmarker: FaceLandmarker, image: np.ndarray, size: int) -> np.ndarray | None:
    """dlib's 68 landmarks of the first face found in `image`, in the pixel frame of the face resized to `size`."""
    boxes = landmarker.detect(image)
    if not boxes:
        return None
    return (landmarker.landmarks(image, boxes[0]) + 0.5) * size / image.shape[1] - 0.5


def write_aligned(folder: Path, paths: Sequence[Path], size: int, ids: Sequence[str] | None = None,
                  landmarks: bool = False, extra_meta: Sequence[Mapping[str, object]] | None = None,
                  edit: Callable[[str, np.ndarray], np.ndarray] | None = None) -> Path:
    """An align-stage folder of `paths` resized to `size`: ids face_000, face_001... unless given; dlib landmarks
    (rounded to 1/1000 px) when asked; `extra_meta` per face merged into its meta line; `edit(id, image)` may
    change a face before it is written."""
    from dlfp.faces.landmarks import FaceLandmarker
    from dlfp.io.images import encode_png, load_rgb

    ids = list(ids) if ids is not None else [f"face_{number:03d}" for number in range(len(paths))]
    landmarker = FaceLandmarker("hog", upsample=1) if landmarks else None
    (folder / "images").mkdir(parents=True)
    lines = []
    for number, (path, sample_id) in enumerate(zip(paths, ids, strict=True)):
        full = load_rgb(path)
        meta = {"id": sample_id, "source": path.name, "licence": "test",
                **(extra_meta[number] if extra_meta is not None else {})}
        if landmarker is not None:
            points = landmarks_at(landmarker, full, size)
            assert points is not None, f"{path.name}: no face"
            meta["landmarks"] = points.round(3).tolist()
        image = resized(full, size)
        if edit is not None:
            image = edit(sample_id, image)
        (folder / "images" / f"{sample_id}.png").write_bytes(encode_png(image))
        lines.append(json.dumps(meta))
    (folder / "meta.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def stage_params(presets: Sequence[str], fractions: Mapping[str, float], samples_per_shard: int,
                 **sections: Mapping[str, object]) -> Params:
    """params.yaml with a hash split of `fractions`, small shards, one degrade worker, only `presets`, and
    `sections` ({"restore": {...}, ...}) updating their sections."""
    import yaml

    from dlfp.params import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["shard"].update(split="hash", fractions=dict(fractions), samples_per_shard=samples_per_shard)
    raw["degrade"].update(workers=1, presets={name: raw["degrade"]["presets"][name] for name in presets})
    for section, values in sections.items():
        raw[section].update(values)
    return parse_params(raw)


def mini_params(**sections: Mapping[str, object]) -> Params:
    """The shared mini project's parameters (its split, shards and presets), with `sections` updated."""
    return stage_params(MINI_PRESETS, MINI_FRACTIONS, MINI_SAMPLES_PER_SHARD, **sections)


def build(root: Path, params: Params, paths: Sequence[Path], size: int, restore: bool = False,
          **aligned: object) -> Path:
    """root/aligned (write_aligned(paths, size, **aligned)) -> root/shards -> root/pairs (-> root/restored)."""
    from dlfp.stages import degrade, shard
    from dlfp.stages import restore as restore_stage

    write_aligned(root / "aligned", paths, size, **aligned)
    shard.run(params, root / "aligned", root / "shards")
    degrade.run(params, root / "shards", root / "pairs")
    if restore:
        restore_stage.run(params, root / "pairs", root / "restored")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file below root, by relative path: compared after the session, so that a test that changed
    the shared project (instead of a copy) fails, whoever runs the tests (file modes do not stop root)."""
    from dlfp.io.hashing import file_digest

    return {path.relative_to(root).as_posix(): file_digest(path) for path in sorted(root.rglob("*")) if path.is_file()}


def build_mini_project(root: Path) -> Path:
    """The shared mini project: MINI_COUNT real FFHQ faces at MINI_SIZE px with dlib landmarks, through the real
    shard, degrade and restore stages (restorers from params.yaml; gfpgan 'not run': no weights)."""
    params = mini_params(restore={"weights": str(root / "absent.pth"), "device": "cpu", "threads": 1})
    return build(root, params, face_paths(MINI_COUNT), MINI_SIZE, restore=True, landmarks=True)
