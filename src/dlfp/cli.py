"""`dlfp`: one subcommand per pipeline stage. Parses arguments, loads params once, calls the stage's run()."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from dlfp.params import DEFAULT_PARAMS_PATH, Params, ParamsError, load_params

log = logging.getLogger("dlfp")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _stage(name: str) -> Callable[[Params, argparse.Namespace], object]:
    """Import stage modules lazily so `dlfp --help` stays fast and one broken stage cannot break the others."""

    def call(params: Params, args: argparse.Namespace) -> object:
        if name == "acquire":
            from dlfp.data import acquire

            return acquire.run(params, out_dir=args.out)
        if name == "align":
            from dlfp.data import align

            return align.run(params, in_dir=args.inp, out_dir=args.out)
        if name == "shard":
            from dlfp.data import shards

            return shards.run(params, in_dir=args.inp, out_dir=args.out)
        if name == "degrade":
            from dlfp.data import degrade

            return degrade.run(params, shards_dir=args.inp, out_dir=args.out)
        if name == "train_prior":
            from dlfp.train import prior

            return prior.run(params, shards_dir=args.inp, out_dir=args.out)
        if name == "train":
            from dlfp.train import gfpgan

            return gfpgan.run(params, shards_dir=args.inp, prior_path=args.prior, pairs_dir=args.pairs,
                              out_dir=args.out)
        if name == "restore":
            from dlfp.restore import testset

            return testset.run(params, pairs_dir=args.inp, out_dir=args.out)
        if name == "evaluate":
            from dlfp.evaluate import stage

            return stage.run(params, pairs_dir=args.inp, restored_dir=args.restored, out_dir=args.out,
                             metrics_path=args.metrics)
        if name == "report":
            from dlfp.report import build

            return build.run(params, data_dir=args.data, out_dir=args.out)
        raise AssertionError(name)

    return call


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlfp", description=__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH, help="parameters file (params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(name: str, help_text: str, inp: str | None, out: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if inp is not None:
            sp.add_argument("--in", dest="inp", type=Path, default=Path(inp), help=f"input folder (default {inp})")
        sp.add_argument("--out", type=Path, default=Path(out), help=f"output folder (default {out})")
        sp.add_argument("--log", type=Path, default=None, help="also write the log to this file")
        sp.set_defaults(run=_stage(name))
        return sp

    stage("acquire", "Get the face images (FFHQ download or a local folder/zip/tar): manifest + rejects.",
          None, "data/raw")
    stage("align", "Detect faces, 68 landmarks, FFHQ alignment and component boxes.", "data/raw", "data/aligned")
    stage("shard", "Split and write WebDataset tars with an index.", "data/aligned", "data/shards")
    stage("degrade", "Write fixed degraded/clean test pairs per severity preset.", "data/shards", "data/pairs")
    stage("train_prior", "Train the StyleGAN2 facial prior (or convert official weights).", "data/shards",
          "models/prior")
    train = stage("train", "Train GFP-GAN on the frozen prior.", "data/shards", "models/gfpgan")
    train.add_argument("--prior", type=Path, default=Path("models/prior/prior.pth"),
                       help="the facial prior (default models/prior/prior.pth)")
    train.add_argument("--pairs", type=Path, default=Path("data/pairs"),
                       help="fixed test pairs for validation (default data/pairs)")
    stage("restore", "Restore the fixed test pairs with every restorer (baselines and GFP-GAN).", "data/pairs",
          "data/restored")
    evaluate = stage("evaluate", "Score restored faces: PSNR/SSIM (pyiqa), identity, landmarks, FD-dlib128.",
                     "data/pairs", "data/evaluation")
    evaluate.add_argument("--restored", type=Path, default=Path("data/restored"),
                          help="restored test pairs (default data/restored)")
    evaluate.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"),
                          help="summary for `dvc metrics show` (default reports/metrics.json)")
    report = stage("report", "Build the static HTML reports.", None, "reports")
    report.add_argument("--data", type=Path, default=Path("data"), help="data folder (default data)")
    return parser


def _configure_logging(verbose: bool, log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.log)
    try:
        params = load_params(args.params)
    except ParamsError as error:
        print(f"dlfp: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        args.run(params, args)
    except KeyboardInterrupt:
        print(f"dlfp {args.stage}: interrupted; no finished output was written", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as error:
        log.debug("stage failed", exc_info=True)
        print(f"dlfp {args.stage}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
