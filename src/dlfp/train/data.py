"""WebDataset training input: clean shards in, (GT, on-the-fly LQ, component boxes) out.

Every random choice of a sample derives from (seed, sample id, epoch) alone: the flip, and the degradation
through `sample_seed(seed, id, f"epoch{n}")` with the same `degrade` function that made the test pairs. The
sample order derives from (seed, epoch) alone: shard order, then a seeded shuffle buffer. Hence:
- resuming at (epoch, offset) replays the epoch's order and skips `offset` samples without decoding them;
- the samples do not depend on the number of DataLoader workers: the stream is dealt to workers by position
  (sample c of the iterator goes to worker c % K), which is exactly the order the DataLoader collects them in;
- ranks get equally many samples per epoch (DDP hangs on unequal batch counts): with at least as many shards
  as ranks, rank r reads shards r, r + W, ... of the epoch's shard order (wds.split_by_node's rule) and every
  rank stops at the smallest rank's count; with fewer shards, every rank reads all shards and keeps the
  samples at positions r, r + W, ... (N // W each).
The shards may be a local folder or a streamed location (an http(s) URL, a `pipe:` command, a brace range:
dlfp.shards.streamed); both give the same samples in the same order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dlfp.degradation import degrade, sample_seed
from dlfp.faces.landmarks import COMPONENTS, mirror_component_boxes
from dlfp.io.hashing import derive_seed
from dlfp.io.images import decode_png_bytes, resize_for_model
from dlfp.params import DegradationParams
from dlfp.shards import streamed as streams
from dlfp.shards.format import TRAIN_SPLIT, require_split, split_records
from dlfp.shards.local import iter_local_shard, read_index, verify_shards

FLIP_PROB = 0.5  # random horizontal flip of the GT (gfpgan-spec section 3)
PRESET_NAMESPACE = "preset"
FLIP_NAMESPACE = "flip"
ORDER_NAMESPACE = "order"


@dataclass(frozen=True)
class SampleRecipe:
    """How one training sample is made: flip, optional LQ synthesis, resize to the training resolution."""

    seed: int
    out_size: int
    # One preset, or several mixed evenly (each sample draws one from (seed, id, epoch)); None: GT only (the prior).
    preset: DegradationParams | tuple[DegradationParams, ...] | None = None
    flip_prob: float = FLIP_PROB


def to_tensor(image: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def scale_boxes(boxes: Mapping[str, Sequence[float]], scale: float) -> Tensor:
    """{name: [cx, cy, half]} in pixel-index coordinates at one size -> (3, 3) at `scale` times that size."""
    rows = []
    for name in COMPONENTS:
        cx, cy, half = boxes[name]
        rows.append([(cx + 0.5) * scale - 0.5, (cy + 0.5) * scale - 0.5, half * scale])
    return torch.tensor(rows, dtype=torch.float32)


def flip_decision(seed: int, sample_id: str, epoch: int, prob: float = FLIP_PROB) -> bool:
    rng = np.random.default_rng(derive_seed(seed, FLIP_NAMESPACE, sample_id, f"epoch{epoch}"))
    return bool(rng.random() < prob)


def preset_choice(seed: int, sample_id: str, epoch: int, count: int) -> int:
    """Which of `count` mixed presets degrades this sample in this epoch."""
    rng = np.random.default_rng(derive_seed(seed, PRESET_NAMESPACE, sample_id, f"epoch{epoch}"))
    return int(rng.integers(count))


def make_sample(gt_png: bytes, meta: Mapping, epoch: int, recipe: SampleRecipe) -> dict:
    """One training sample: {'key', 'gt', 'lq' (if a preset is given), 'boxes' (3, 3) or absent}.

    The cached `meta` is never mutated (mirror_component_boxes returns a new dict)."""
    key = str(meta["id"])
    gt = decode_png_bytes(gt_png, source=key)
    boxes = meta.get("boxes")
    if flip_decision(recipe.seed, key, epoch, recipe.flip_prob):
        gt = np.ascontiguousarray(gt[:, ::-1])
        boxes = mirror_component_boxes(boxes, gt.shape[1]) if boxes else None
    sample: dict = {"key": key, "gt": to_tensor(resize_for_model(gt, recipe.out_size))}
    preset = recipe.preset
    if isinstance(preset, tuple):
        preset = preset[preset_choice(recipe.seed, key, epoch, len(preset))]
    if preset is not None:
        lq, _ = degrade(gt, preset, sample_seed(recipe.seed, key, f"epoch{epoch}"))
        sample["lq"] = to_tensor(resize_for_model(lq, recipe.out_size))
    if boxes:
        sample["boxes"] = scale_boxes(boxes, recipe.out_size / gt.shape[1])
    return sample


class ShardStream(IterableDataset):
    """Endless, resumable stream of training samples for one rank; yields (epoch, index, sample)."""

    def __init__(self, folder: Path | str, records: Sequence[Mapping], recipe: SampleRecipe, *,
                 rank: int = 0, world_size: int = 1, start_epoch: int = 0, start_offset: int = 0,
                 shuffle_buffer: int = 1000) -> None:
        super().__init__()
        self.location = streams.normalise_location(folder)
        self.streamed = streams.resolve(self.location) if streams.is_streamed(self.location) else None
        self.folder = Path(folder)
        self.records = [dict(r) for r in records]
        if not self.records or sum(int(r["count"]) for r in self.records) < world_size:
            raise ValueError(f"{self.folder}: too few training samples for {world_size} rank(s)")
        self.recipe = recipe
        self.rank, self.world_size = rank, world_size
        self.start_epoch, self.start_offset = start_epoch, start_offset
        self.shuffle_buffer = max(1, shuffle_buffer)

    # -- order -----------------------------------------------------------------------------------------------
    def _shard_order(self, epoch: int) -> list[dict]:
        rng = np.random.default_rng(derive_seed(self.recipe.seed, ORDER_NAMESPACE, "shards", epoch))
        return [self.records[i] for i in rng.permutation(len(self.records))]

    def epoch_plan(self, epoch: int) -> tuple[list[dict], int, bool]:
        """(shards this rank reads, samples per rank this epoch, whether ranks share the shards)."""
        order = self._shard_order(epoch)
        if len(order) >= self.world_size:
            per_rank = [order[r::self.world_size] for r in range(self.world_size)]
            limit = min(sum(int(s["count"]) for s in shards) for shards in per_rank)
            return per_rank[self.rank], limit, False
        return order, sum(int(s["count"]) for s in order) // self.world_size, True

    def samples_per_epoch(self, epoch: int = 0) -> int:
        return self.epoch_plan(epoch)[1]

    def _raw_epoch(self, epoch: int) -> Iterator[dict]:
        """This rank's undecoded samples of `epoch`, in their seeded order, exactly `limit` of them."""
        shards, limit, shared = self.epoch_plan(epoch)
        if self.streamed is not None:
            stream = streams.iter_streamed_samples(self.streamed, shards)
        else:
            stream = (sample for shard in shards for sample in iter_local_shard(self.folder / shard["path"]))
        stream_id = "all" if shared else f"rank{self.rank}"
        rng = np.random.default_rng(derive_seed(self.recipe.seed, ORDER_NAMESPACE, "buffer", epoch, stream_id))
        position, taken = 0, 0
        for raw in _shuffled(stream, self.shuffle_buffer, rng):
            mine = (position % self.world_size == self.rank) if shared else True
            position += 1
            if mine:
                yield raw
                taken += 1
                if taken == limit:
                    return

    def __iter__(self) -> Iterator[tuple[int, int, dict]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, offset, dealt = self.start_epoch, self.start_offset, 0
        while True:
            for index, raw in enumerate(self._raw_epoch(epoch)):
                if index < offset:
                    continue  # resuming: skipped without decoding
                if dealt % workers == worker:
                    meta = json.loads(raw["json"])
                    require_split(meta, TRAIN_SPLIT, "training stream")
                    yield epoch, index, make_sample(raw["gt.png"], meta, epoch, self.recipe)
                dealt += 1
            epoch, offset = epoch + 1, 0


def _shuffled(samples: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Seeded shuffle buffer: fill to `size`, then emit a random element and replace it by the next."""
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        pick = int(rng.integers(len(buffer)))
        buffer[pick], sample = sample, buffer[pick]
        yield sample
    while buffer:
        yield buffer.pop(int(rng.integers(len(buffer))))


def collate(samples: Sequence[dict]) -> dict:
    batch: dict = {"key": [s["key"] for s in samples], "gt": torch.stack([s["gt"] for s in samples])}
    if "lq" in samples[0]:
        batch["lq"] = torch.stack([s["lq"] for s in samples])
    if all("boxes" in s for s in samples):
        boxes = torch.stack([s["boxes"] for s in samples])  # (B, 3, 3)
        batch["boxes"] = {name: boxes[:, i] for i, name in enumerate(COMPONENTS)}
    return batch


class Batches:
    """Batches of `batch_size` from a ShardStream, tracking the (epoch, offset) to resume from."""

    def __init__(self, stream: ShardStream, batch_size: int, workers: int = 0) -> None:
        self.stream = stream
        self.batch_size = batch_size
        self.epoch, self.offset = stream.start_epoch, stream.start_offset
        # batch_size None: samples arrive one by one in stream order; batching here keeps batches independent
        # of the worker count. The generator keeps DataLoader from drawing on the global torch RNG.
        loader = DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=False,
                            generator=torch.Generator().manual_seed(0),
                            prefetch_factor=max(2, batch_size) if workers > 0 else None)
        self._iterator = iter(loader)

    def __next__(self) -> dict:
        samples = []
        for _ in range(self.batch_size):
            epoch, index, sample = next(self._iterator)
            samples.append(sample)
            self.epoch, self.offset = epoch, index + 1
        return collate(samples)

    def __iter__(self) -> Batches:
        return self

    def state(self) -> dict:
        """Where the next batch starts (saved in checkpoints)."""
        return {"epoch": self.epoch, "offset": self.offset}


def train_records(shards_dir: Path | str, verify: bool = True) -> list[dict]:
    """The train split's shard records (count, sha256) from the index, optionally checked on disk.

    For a streamed location only the train shards it names are kept (all of them for a folder URL); they are
    checked while they stream."""
    if streams.is_streamed(shards_dir):
        source = streams.resolve(shards_dir)
        records = source.records(split_records(source.index, TRAIN_SPLIT))
        if not records:
            raise ValueError(f"{streams.normalise_location(shards_dir)}: names no train shard listed in "
                             f"{source.index_url}")
        return records
    shards_dir = Path(shards_dir)
    records = split_records(read_index(shards_dir), TRAIN_SPLIT)
    if not records:
        raise ValueError(f"{shards_dir}: the index lists no train shards; run `dlfp shard` first")
    if verify:
        verify_shards(shards_dir, records)
    return records
