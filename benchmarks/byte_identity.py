"""Byte-identity check for refactors: a fixed small run through every stage, fingerprinted.

`record` runs acquire (folder) -> align -> shard -> degrade -> train_prior -> train -> restore -> evaluate -> bias
with the `dlfp` command on a few shared faces and tiny networks, and writes the sha256 of every shard, pair and
restored tar plus metrics.json, bias.json and per_image.csv to benchmarks/results/byte_identity.json. `check`
runs the same thing and fails listing every artifact whose fingerprint differs. A refactor that claims "behaviour
does not change" records before the move and checks after it, on the same machine (float results of the training
stages may differ between CPUs, so the recorded file is a per-machine reference, not a portable one).

Canonicalisation, so that the only renames the restructuring asked for do not count as behaviour:
- the no-op restorer was called `identity` and is now `lq` (a JSON key/value or CSV cell exactly equal to
  either, and the restored/<name>/ folder, count as `lq`);
- the temporary run folder is replaced by `<RUN>` inside JSON text.
Tars are fingerprinted by member name and member bytes (JSON members canonicalised), not by tar headers.
Every re-recording keeps the reference's "notes": why the reference changed and how the change was checked.

Usage: python benchmarks/byte_identity.py record|check [--faces N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# DLFP_FACES: for a worktree outside the folder that holds shared/
FACES = Path(os.environ.get("DLFP_FACES", REPO.parent / "shared" / "faces" / "aligned_hq"))
RESULT = REPO / "benchmarks" / "results" / "byte_identity.json"
OLD_LQ_NAMES = {"identity", "lq"}
RUN_TOKEN = "<RUN>"


def _params(run: Path, faces: Path, count: int) -> dict:
    """The repository's params.yaml with small, fast overrides (tiny networks, a few steps, few resamples)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["data"].update(source="folder", folder=str(faces), count=count, size=64, cache_dir=str(run / "downloads"))
    raw["align"]["workers"] = 1
    raw["shard"].update(split="hash", samples_per_shard=8)
    raw["degrade"]["workers"] = 1
    quiet = dict(workers=0, threads=1, tensorboard=False, batch_size=2, shuffle_buffer=8, checkpoint_every=10,
                 sample_every=10, device="cpu")
    raw["train_prior"].update(quiet, out_size=64, num_style_feat=32, num_mlp=1, narrow=0.0625, iters=10,
                              eval_samples=0)
    raw["train"].update(quiet, iters=10, val_every=5, val_count=8, lr_milestones=[], perceptual_network="off",
                        identity_network="dlib")
    raw["restore"].update(batch_size=4, device="cpu", threads=1)
    raw["evaluate"].update(device="cpu", threads=1)
    raw["bias"].update(resamples=200, min_group_size=2)
    if raw["bias"]["labels"]:
        raw["bias"]["labels"] = str(FACES.parent / "labels" / Path(raw["bias"]["labels"]).name)
    return raw


def _run_stages(run: Path, count: int) -> None:
    faces = run / "faces"
    faces.mkdir()
    for path in sorted(FACES.glob("ffhq*.jpg"))[:count]:
        shutil.copy2(path, faces / path.name)
    (run / "params.yaml").write_text(yaml.safe_dump(_params(run, faces, count), sort_keys=False), encoding="utf-8")
    env = {**os.environ, "PYTHONHASHSEED": "0", "DLFP_CACHE": os.environ.get("DLFP_CACHE", str(run / "cache")),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    dlfp = [sys.executable, "-m", "dlfp", "--params", "params.yaml"]
    commands = [
        ["acquire", "--out", "data/raw"],
        ["align", "--in", "data/raw", "--out", "data/aligned"],
        ["shard", "--in", "data/aligned", "--out", "data/shards"],
        ["degrade", "--in", "data/shards", "--out", "data/pairs"],
        ["train_prior", "--in", "data/shards", "--out", "models/prior"],
        ["train", "--in", "data/shards", "--prior", "models/prior/prior.pth", "--pairs", "data/pairs",
         "--out", "models/gfpgan"],
        ["restore", "--in", "data/pairs", "--out", "data/restored"],
        ["evaluate", "--in", "data/pairs", "--restored", "data/restored", "--out", "data/evaluation",
         "--metrics", "reports/metrics.json"],
        ["bias", "--shards", "data/shards", "--pairs", "data/pairs", "--restored", "data/restored",
         "--evaluation", "data/evaluation", "--out", "data/bias", "--summary", "reports/bias.json"],
    ]
    for args in commands:
        print("dlfp", " ".join(args), flush=True)
        result = subprocess.run(dlfp + args, cwd=run, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"dlfp {args[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def _canonical_json(value: object) -> object:
    if isinstance(value, dict):
        return {("lq" if key in OLD_LQ_NAMES else key): _canonical_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical_json(item) for item in value]
    if isinstance(value, str) and value in OLD_LQ_NAMES:
        return "lq"
    return value


def _json_digest(data: bytes, run: Path) -> str:
    text = data.decode("utf-8").replace(str(run.resolve()), RUN_TOKEN).replace(str(run), RUN_TOKEN)
    canonical = json.dumps(_canonical_json(json.loads(text)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _csv_digest(data: bytes) -> str:
    rows = [["lq" if cell in OLD_LQ_NAMES else cell for cell in row]
            for row in csv.reader(io.StringIO(data.decode("utf-8")))]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _tar_digest(path: Path, run: Path) -> str:
    digest = hashlib.sha256()
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            data = archive.extractfile(member).read()
            content = _json_digest(data, run) if member.name.endswith(".json") else hashlib.sha256(data).hexdigest()
            digest.update(f"{member.name}\0{content}\n".encode())
    return digest.hexdigest()


def _canonical_path(relative: Path) -> str:
    parts = list(relative.parts)
    if len(parts) > 2 and parts[:2] == ["data", "restored"] and parts[2] in OLD_LQ_NAMES:
        parts[2] = "lq"
    return "/".join(parts)


def fingerprints(run: Path) -> dict[str, str]:
    """sha256 per artifact: every tar under data/{shards,pairs,restored}, plus the evaluation and bias tables."""
    found: dict[str, str] = {}
    for folder in ("shards", "pairs", "restored"):
        for path in sorted((run / "data" / folder).rglob("*.tar")):
            found[_canonical_path(path.relative_to(run))] = _tar_digest(path, run)
    for name in ("reports/metrics.json", "reports/bias.json"):
        found[name] = _json_digest((run / name).read_bytes(), run)
    for path in sorted((run / "data" / "evaluation").rglob("*.csv")):
        found[_canonical_path(path.relative_to(run))] = _csv_digest(path.read_bytes())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("record", "check"))
    parser.add_argument("--faces", type=int, default=40, help="shared faces in the run (default 40)")
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it")
    args = parser.parse_args()
    if not FACES.is_dir():
        sys.exit(f"{FACES}: the shared faces are missing")
    with tempfile.TemporaryDirectory(prefix="dlfp-byte-identity-") as scratch:
        run = args.keep or Path(scratch) / "run"
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        _run_stages(run, args.faces)
        found = fingerprints(run)
    if args.mode == "record":
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        notes = json.loads(RESULT.read_text(encoding="utf-8")).get("notes", []) if RESULT.is_file() else []
        RESULT.write_text(json.dumps({"commit": commit, "faces": args.faces, "notes": notes, "artifacts": found},
                                     indent=1) + "\n", encoding="utf-8")
        print(f"recorded {len(found)} fingerprints to {RESULT.relative_to(REPO)} at {commit[:10]}")
        return
    recorded = json.loads(RESULT.read_text(encoding="utf-8"))["artifacts"]
    changed = sorted(name for name in recorded.keys() | found.keys() if recorded.get(name) != found.get(name))
    for name in changed:
        print(f"DIFFERS {name}: recorded {recorded.get(name, 'absent')[:12]} now {found.get(name, 'absent')[:12]}")
    if changed:
        sys.exit(f"{len(changed)} of {len(recorded)} artifacts differ from {RESULT.relative_to(REPO)}")
    print(f"all {len(recorded)} artifacts identical to {RESULT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
