"""Time the data pipeline under DVC: a first `dvc repro degrade`, then a second one that must skip everything.

Usage: python benchmarks/bench_pipeline.py [--count N]   (writes benchmarks/results/pipeline.json)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_description  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WIRING = ("dvc.yaml", "Snakefile", "workflow", "profiles", "src")


def _timed(args: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=None, help="data.count (default: all shared faces)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pipeline.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch) / "project"
        project.mkdir()
        for name in WIRING:
            (project / name).symlink_to(REPO / name)
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw["data"].update(folder=str(REPO.parent / "shared" / "faces" / "aligned_hq"), count=args.count)
        (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        subprocess.run(["git", "init", "-q"], cwd=project, check=True)
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=project, check=True)
        first, log = _timed([str(BIN / "dvc"), "repro", "degrade"], project)
        second, second_log = _timed([str(BIN / "dvc"), "repro", "degrade"], project)
        summaries = [line for line in log.splitlines()
                     if line.split(":")[0] in ("acquire", "align", "shard", "degrade") and " -> " in line]
    results = {"count": args.count or "all", "first_repro_s": round(first, 1), "second_repro_s": round(second, 2),
               "second_run_skipped_everything": "Running stage" not in second_log,
               "stage_summaries": summaries, "machine": machine_description()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
