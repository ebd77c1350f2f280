"""`dlfp`: one subcommand per pipeline stage. Parses arguments, loads params once, calls the stage's run().

Argument parsing only: default paths come from dlfp.layout, the own-photos defaults from dlfp.photos.defaults
(both torch-free, so `dlfp --help` stays fast); stage modules are imported when their subcommand runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from dlfp import layout
from dlfp.params import DEFAULT_PARAMS_PATH, Params, ParamsError, load_params
from dlfp.photos import defaults as photos

log = logging.getLogger("dlfp")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _stage(name: str) -> Callable[[Params, argparse.Namespace], object]:
    """Import stage modules lazily so `dlfp --help` stays fast and one broken stage cannot break the others."""

    def call(params: Params, args: argparse.Namespace) -> object:
        if name == "acquire":
            from dlfp.stages import acquire

            return acquire.run(params, out_dir=args.out)
        if name == "align":
            from dlfp.stages import align

            return align.run(params, in_dir=args.inp, out_dir=args.out)
        if name == "shard":
            from dlfp.stages import shard

            return shard.run(params, in_dir=args.inp, out_dir=args.out)
        if name == "degrade":
            from dlfp.stages import degrade

            return degrade.run(params, shards_dir=args.inp, out_dir=args.out)
        if name == "train_prior":
            from dlfp.stages import train_prior

            return train_prior.run(params, shards_dir=args.inp, out_dir=args.out)
        if name == "train":
            from dlfp.stages import train

            return train.run(params, shards_dir=args.inp, prior_path=args.prior, pairs_dir=args.pairs,
                             out_dir=args.out)
        if name == "restore":
            from dlfp.stages import restore

            return restore.run(params, pairs_dir=args.inp, out_dir=args.out, **_split(args))
        if name == "evaluate":
            from dlfp.stages import evaluate

            return evaluate.run(params, pairs_dir=args.inp, restored_dir=args.restored, out_dir=args.out,
                                metrics_path=args.metrics, **_split(args))
        if name == "bias":
            from dlfp.stages import bias as bias_stage

            labels = args.labels if args.labels is not None else params.bias.labels
            return bias_stage.run(params, shards_dir=args.shards, pairs_dir=args.pairs, restored_dir=args.restored,
                                  evaluation_dir=args.evaluation, out_dir=args.out, summary_path=args.summary,
                                  labels_path=Path(labels) if labels is not None else None)
        if name == "report":
            from dlfp.stages import report

            return report.run(params, data_dir=args.data, out_dir=args.out, models_dir=args.models)
        raise AssertionError(name)

    return call


def _split(args: argparse.Namespace) -> dict[str, str]:
    """The stage's `split` argument when --split was given; without it the stage reads its default, the test split
    (what the pipeline runs). The stage checks the name (the split names live in dlfp.shards, not imported here)."""
    return {} if args.split is None else {"split": args.split}


def _add_split(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--split", default=None, metavar="SPLIT",
                    help="pairs to read: test (default: the reported figures, read once by the pipeline) or val "
                         "(tuning); restore and evaluate of one run must use the same split")


def _add_restore(sp: argparse.ArgumentParser) -> None:
    """The own-photo form of `restore`, selected by positional INPUTs; the test-pair stage form needs --in/--out."""
    sp.usage = ("dlfp restore --in PAIRS --out RESTORED [--split val|test]\n"
                "       dlfp restore INPUT [INPUT ...] -o OUTDIR [--weights PATH|gfpgan-v1.3|gfpgan-v1.4] [--upscale N]"
                " [--only-center-face] [--force] [--device cpu|cuda] [--detector hog|cnn] [--overwrite] [...]")
    sp.epilog = ("Own photos, exit codes: 0 every photo succeeded ('no face', 'face too small' and 'model "
                 "resolution too low' are successes: the photo is copied through), 1 some photo failed or no "
                 "weights were found, 2 usage error "
                 "(including outputs that already exist without --overwrite).")
    sp.set_defaults(print_usage=sp.print_usage)  # main() shows the usage with a usage error
    group = sp.add_argument_group("own photos (dlfp restore INPUT... -o OUTDIR)")
    group.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                       help="photo files or folders (searched recursively)")
    group.add_argument("-o", "--output", type=Path, default=None, metavar="OUTDIR",
                       help="output folder: restored/, faces/, summary.json, summary.csv, index.html")
    group.add_argument("--weights", default=None, metavar="PATH|NAME",
                       help=f"GFP-GAN weights: a dl-fp checkpoint or the official GFPGANv1.3/1.4 file, or "
                            f"{' / '.join(photos.OFFICIAL_NAMES)} to download the official release file once into "
                            f"$DLFP_CACHE/weights (default {photos.DEFAULT_WEIGHTS}, the train stage's output)")
    group.add_argument("--upscale", type=int, default=photos.DEFAULT_UPSCALE, metavar="N",
                       help=f"output size = input size x N (default {photos.DEFAULT_UPSCALE})")
    group.add_argument("--only-center-face", action="store_true", help="restore only the face nearest the centre")
    group.add_argument("--too-large-ratio", type=float, default=photos.DEFAULT_TOO_LARGE_RATIO, metavar="R",
                       help=f"leave faces larger than R x the model's output size (in output px) as they are, with "
                            f"status 'model resolution too low' (default {photos.DEFAULT_TOO_LARGE_RATIO})")
    group.add_argument("--force", action="store_true",
                       help="restore too-large faces anyway (the model's output is upsampled: it loses detail)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    group.add_argument("--detector", choices=("hog", "cnn"), default="hog",
                       help="dlib face detector: hog (default) or cnn (mmod, slower, finds more)")
    group.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier run")
    group.add_argument("--min-face-size", type=int, default=photos.DEFAULT_MIN_FACE_SIZE, metavar="PX",
                       help=f"skip (and report) faces whose box is smaller (default {photos.DEFAULT_MIN_FACE_SIZE})")
    group.add_argument("--max-pixels", type=int, default=photos.DEFAULT_MAX_PIXELS,
                       help=f"refuse photos whose output would be larger (default {photos.DEFAULT_MAX_PIXELS})")
    group.add_argument("--batch-size", type=int, default=photos.DEFAULT_BATCH_SIZE,
                       help=f"faces per network batch, across photos (default {photos.DEFAULT_BATCH_SIZE})")
    group.add_argument("--ext", choices=("auto", "png", "jpg", "webp"), default="auto",
                       help="restored photos' format: auto (default) keeps the input's (JPEG, PNG, WebP; others PNG)")
    group.add_argument("--quality", type=int, default=photos.DEFAULT_QUALITY, metavar="Q",
                       help=f"JPEG/WebP quality 1..100 (default {photos.DEFAULT_QUALITY})")
    group.add_argument("--backend", choices=layout.INFERENCE_BACKENDS, default=photos.DEFAULT_BACKEND,
                       help="network runtime: auto (default: OpenVINO on the CPU when installed, else torch), torch, "
                            "openvino (pip install 'dlfp[openvino]'; compiled once per weights into $DLFP_CACHE)")


def _restore_usage_error(args: argparse.Namespace) -> str | None:
    """Why the restore arguments mix the two forms, or None when they are consistent."""
    if args.inputs:
        if args.output is None:
            return "INPUT given without -o/--output OUTDIR (own photos need an output folder)"
        if args.inp is not None or args.out is not None or args.split is not None:
            return ("--in/--out/--split belong to the pair stage form; with INPUT photos use only "
                    "-o/--output OUTDIR")
    elif args.output is not None:
        return "-o/--output is for own photos: give the INPUT files or folders too (dlfp restore INPUT... -o OUTDIR)"
    elif args.inp is None or args.out is None:
        return ("the test-pair stage form needs both --in PAIRS and --out RESTORED "
                f"(as dvc.yaml runs it: dlfp restore --in {layout.PAIRS} --out {layout.RESTORED}); "
                "own photos: dlfp restore INPUT... -o OUTDIR")
    return None


def _restore_photos(args: argparse.Namespace) -> int:
    """`dlfp restore INPUT... -o OUTDIR`: 0 all photos succeeded, 1 some failed (or no weights), 2 usage."""
    from dlfp.photos import inputs, pipeline

    try:
        summary = pipeline.run_photos(
            args.inputs, args.output, weights=args.weights, upscale=args.upscale,
            only_center_face=args.only_center_face, detector=args.detector, device=args.device,
            overwrite=args.overwrite, min_face_size=args.min_face_size, max_pixels=args.max_pixels,
            batch_size=args.batch_size, too_large_ratio=args.too_large_ratio, force=args.force, ext=args.ext,
            quality=args.quality, backend=args.backend)
    except inputs.PhotosUsageError as error:
        print(f"dlfp restore: usage error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except pipeline.WeightsNotFoundError as error:
        print(f"dlfp restore: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("dlfp restore: interrupted; finished photos are in place, the summary was not written", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as error:
        log.debug("restore failed", exc_info=True)
        print(f"dlfp restore: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.weights in photos.OFFICIAL_NAMES:  # issue 14: the release file's model card, written beside it
        from dlfp.report.official_card import write_official_card

        print(f"restore: model card {write_official_card(summary['run']['weights_file'])}")
    return pipeline.exit_code(summary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlfp", description=__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH, help="parameters file (params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(name: str, help_text: str, *, path_defaults: bool = True) -> argparse.ArgumentParser:
        """The stage's subcommand: --in (when it has a main input) and --out, defaulting to dlfp.layout's paths
        unless `path_defaults` is False (then both are required by main(), and None when not given)."""
        sp = sub.add_parser(name, help=help_text, description=help_text)
        inp, out = layout.STAGE_IN.get(name), layout.STAGE_OUT[name]
        if inp is not None:
            sp.add_argument("--in", dest="inp", type=Path, default=Path(inp) if path_defaults else None,
                            help=f"input folder (default {inp})" if path_defaults else "input folder (required)")
        sp.add_argument("--out", type=Path, default=Path(out) if path_defaults else None,
                        help=f"output folder (default {out})" if path_defaults else "output folder (required)")
        sp.add_argument("--log", type=Path, default=None, help="also write the log to this file")
        sp.set_defaults(run=_stage(name))
        return sp

    def path_option(sp: argparse.ArgumentParser, flag: str, default: str, what: str) -> None:
        sp.add_argument(flag, type=Path, default=Path(default), help=f"{what} (default {default})")

    stage("acquire", "Get the face images (FFHQ download or a local folder/zip/tar): manifest + rejects.")
    stage("align", "Detect faces, 68 landmarks, FFHQ alignment and component boxes.")
    stage("shard", "Split and write WebDataset tars with an index.")
    stage("degrade", "Write fixed degraded/clean test pairs per severity preset.")
    stage("train_prior", "Train the StyleGAN2 facial prior (or convert official weights).")
    train = stage("train", "Train GFP-GAN on the frozen prior.")
    path_option(train, "--prior", layout.PRIOR_CHECKPOINT, "the facial prior")
    path_option(train, "--pairs", layout.PAIRS, "fixed test pairs for validation")
    # No path defaults: a bare `dlfp restore` is a usage error, not a silent run on data/pairs.
    restore = stage("restore", "Restore the fixed test pairs (or with --split val the val pairs, for tuning) with "
                    f"every restorer (baselines and GFP-GAN): dlfp restore --in {layout.PAIRS} --out "
                    f"{layout.RESTORED}; or your own photos: dlfp restore INPUT... -o OUTDIR.", path_defaults=False)
    _add_split(restore)
    _add_restore(restore)
    evaluate = stage("evaluate", "Score restored faces: PSNR/SSIM (pyiqa), identity, landmarks, FD-dlib128.")
    _add_split(evaluate)
    path_option(evaluate, "--restored", layout.RESTORED, "restored test pairs")
    path_option(evaluate, "--metrics", layout.METRICS_SUMMARY, "summary for `dvc metrics show`")
    bias = stage("bias", "Skin tone, age and gender groups: per-group metrics with CIs, gaps, tone shift, flips.")
    for flag, default, what in (("--shards", layout.SHARDS, "clean shards (splits, landmarks)"),
                                ("--pairs", layout.PAIRS, "fixed test pairs"),
                                ("--restored", layout.RESTORED, "restored test pairs"),
                                ("--evaluation", layout.EVALUATION, "evaluate stage output"),
                                ("--summary", layout.BIAS_SUMMARY, "compact summary for `dvc metrics show`")):
        path_option(bias, flag, default, what)
    bias.add_argument("--labels", type=Path, default=None,
                      help="FFHQ attribute CSV (ffhq_id, gender, age); default: params bias.labels")
    report = stage("report", "Build the static HTML reports.")
    path_option(report, "--data", layout.DATA_DIR, "data folder")
    path_option(report, "--models", layout.MODELS_DIR, "models folder")
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
    if args.stage == "restore":  # own photos need no params.yaml; the stage form falls through
        problem = _restore_usage_error(args)
        if problem is not None:
            args.print_usage(sys.stderr)
            print(f"dlfp restore: usage error: {problem}", file=sys.stderr)
            return EXIT_USAGE
        if args.inputs:
            return _restore_photos(args)
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
