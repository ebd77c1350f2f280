"""Where the pipeline's things live and what they are called, defined once.

Stage names, each stage's default input/output paths (relative to the project root, as `dlfp`, dvc.yaml and the
Snakemake rules use them), the file names of artifacts that more than one module reads or writes, and the status
words shared across stages and pages. The CLI's defaults, the Snakefile (which imports this module) and
tests/test_wiring.py (which checks dvc.yaml's literal paths against it) all read from here.

Import-light on purpose (standard library only): `dlfp --help` and Snakemake import it.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------------------ stages
STAGES = ("acquire", "align", "shard", "degrade", "train_prior", "train", "restore", "evaluate", "bias", "report")

# ------------------------------------------------------------------------------------------ root folders
DATA_DIR = "data"
MODELS_DIR = "models"
REPORTS_DIR = "reports"
LOGS_DIR = "logs"

# Each stage's output folder name, under DATA_DIR or MODELS_DIR (report pages join them to --data / --models).
DATA_FOLDERS = {"acquire": "raw", "align": "aligned", "shard": "shards", "degrade": "pairs", "restore": "restored",
                "evaluate": "evaluation", "bias": "bias"}
MODEL_FOLDERS = {"train_prior": "prior", "train": "gfpgan"}

# ------------------------------------------------------------------------------------ artifact file names
INDEX_NAME = "index.json"          # a shard/pair/restored folder's index
RECEIPT_NAME = "receipt.json"      # every stage's receipt
MANIFEST_NAME = "manifest.csv"     # acquire and align: one row per kept image
REJECTS_NAME = "rejects.csv"       # acquire and align: one row per dropped image and why
META_NAME = "meta.jsonl"           # align: per-image landmarks and boxes
PER_IMAGE_NAME = "per_image.csv"   # evaluate: one row per (restorer, preset, image)
SUMMARY_NAME = "summary.json"      # evaluate: the aggregated figures
TIMINGS_NAME = "timings.csv"       # restore: seconds per image
PRIOR_FILE = "prior.pth"           # train_prior's checkpoint
GFPGAN_FILE = "gfpgan.pth"         # train's checkpoint
METRICS_JSON = "metrics.json"      # evaluate's summary for `dvc metrics show`, under REPORTS_DIR
BIAS_JSON = "bias.json"            # the bias stage's document (data/bias) and its summary (reports)
REPORT_INDEX = "index.html"        # the report's landing page
CARD_NAME = "MODEL_CARD.md"       # the model card, in the report and beside the trained model
REPORT_PAGES = ("data.html", "training.html", "evaluation.html", "bias.html", "model.html")
REPORT_ASSET_FOLDERS = ("training", "evaluation")  # images the pages show, under REPORTS_DIR

# --------------------------------------------------------------------------------------- default paths
RAW = f"{DATA_DIR}/{DATA_FOLDERS['acquire']}"
ALIGNED = f"{DATA_DIR}/{DATA_FOLDERS['align']}"
SHARDS = f"{DATA_DIR}/{DATA_FOLDERS['shard']}"
PAIRS = f"{DATA_DIR}/{DATA_FOLDERS['degrade']}"
PRIOR = f"{MODELS_DIR}/{MODEL_FOLDERS['train_prior']}"
PRIOR_CHECKPOINT = f"{PRIOR}/{PRIOR_FILE}"
GFPGAN = f"{MODELS_DIR}/{MODEL_FOLDERS['train']}"
GFPGAN_CHECKPOINT = f"{GFPGAN}/{GFPGAN_FILE}"
RESTORED = f"{DATA_DIR}/{DATA_FOLDERS['restore']}"
EVALUATION = f"{DATA_DIR}/{DATA_FOLDERS['evaluate']}"
BIAS = f"{DATA_DIR}/{DATA_FOLDERS['bias']}"
METRICS_SUMMARY = f"{REPORTS_DIR}/{METRICS_JSON}"
BIAS_SUMMARY = f"{REPORTS_DIR}/{BIAS_JSON}"

# Each stage's default output folder (the stage's `--out`).
STAGE_OUT = {"acquire": RAW, "align": ALIGNED, "shard": SHARDS, "degrade": PAIRS, "train_prior": PRIOR,
             "train": GFPGAN, "restore": RESTORED, "evaluate": EVALUATION, "bias": BIAS, "report": REPORTS_DIR}
# Each stage's default main input folder (the stage's `--in`); stages without `--in` are absent.
STAGE_IN = {"align": RAW, "shard": ALIGNED, "degrade": SHARDS, "train_prior": SHARDS, "train": SHARDS,
            "restore": PAIRS, "evaluate": PAIRS}
# The report stage's files (its outputs besides the asset folders).
REPORT_FILES = tuple(f"{REPORTS_DIR}/{name}" for name in (REPORT_INDEX, *REPORT_PAGES, CARD_NAME))


def log_path(stage: str) -> str:
    """The stage's log file, as dvc.yaml and the Snakemake rules pass it to `--log`."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
    return f"{LOGS_DIR}/{stage}.log"


# -------------------------------------------------------------------------------------------- status words
STATUS_OK = "ok"
STATUS_NOT_RUN = "not run"
NOT_COMPUTED = "not computed"  # a figure that could not be computed; the reason follows after ": "

# ---------------------------------------------------------------------------------------------- restorers
LQ_RESTORER = "lq"  # the no-op baseline: the degraded input itself, scored as a restorer

# ------------------------------------------------------------------------------------- inference backends
INFERENCE_BACKENDS = ("auto", "torch", "openvino")  # dlfp.inference; auto: OpenVINO on the CPU when installed
