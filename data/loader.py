"""One way from a config's dataset section to a dataset, its resumable sampler and its DataLoader.

Used by training and validation (``sr.py``), split inference (``infer.py``) and the benchmark (``bench/``); the
embedded dataset is built by the caller first (``ensure_config_data``) when the config has one.
"""
from __future__ import annotations

from torch.utils.data import DataLoader

from core.config import DatasetConfig, DatasetsConfig
from core.distributed import DistInfo
from core.registry import TASKS
from data.builders.embedded import ensure_embedded_dataset
from data.epoch_sampler import EpochSampler, PatchGrid, ShardedEpochSampler
from data.fusion_dataset import FusionDataset, create_dataloader

__all__ = ["dataset_from_config", "ensure_config_data"]


def ensure_config_data(datasets: DatasetsConfig, progress: bool = True) -> None:
    """Build the embedded dataset of `datasets.embedded` on first use (nothing to do without one)."""
    emb = datasets.embedded
    if emb is not None:
        ensure_embedded_dataset(emb.root, emb.r_resolution, emb.scales, emb.seed, progress=progress)


def dataset_from_config(ds_cfg: DatasetConfig, *, seed: int, train: bool, dist: DistInfo | None = None,
                        require_target: bool = True, base_rule: str | None = None,
                        task: str = "fusion") -> tuple[FusionDataset, EpochSampler, DataLoader]:
    """The dataset of ``ds_cfg``, its epoch sampler and a loader yielding its batches.

    ``task`` (``model.task``, a name of ``core.registry.TASKS``) chooses the dataset: ``"fusion"`` reads the
    tri-modal layout into ``FusionBatch``, ``"sr3"`` the single-image layout into ``data.sr_dataset.SRBatch``.

    ``train``: the order is shuffled when ``use_shuffle`` is set, every case is flipped at random and, with
    ``patch_size``, cut to an aligned random crop of that side (all drawn by the sampler from ``seed`` and the epoch,
    so a resumed run continues exactly; see ``data.epoch_sampler``); otherwise the cases come whole, in order,
    unflipped. Under DDP (``dist`` with more than one process) training loads this process's contiguous shard of
    every global batch of ``batch_size``; evaluation loads every case in every process. ``require_target=False``
    accepts a split without an ``hr_`` folder (the batches' target is then None). ``base_rule``: the batches carry
    that fusion rule of the whole sources as ``base`` (``model.diffusion.residual_base``; ``FusionDataset``).
    """
    dist = dist or DistInfo()
    dataset = TASKS.get(task).dataset(ds_cfg.dataroot, ds_cfg.l_resolution, ds_cfg.r_resolution,
                                      data_len=ds_cfg.data_len, require_target=require_target,
                                      cache_images=ds_cfg.cache_images, base_rule=base_rule)
    shuffle = ds_cfg.use_shuffle and train
    batch = ds_cfg.batch_size
    patches = None
    if train and ds_cfg.patch_size is not None:
        patches = PatchGrid(ds_cfg.r_resolution, ds_cfg.patch_size, ds_cfg.r_resolution // ds_cfg.l_resolution)
    if train and dist.enabled:
        part = dist.shard(batch)
        sampler: EpochSampler = ShardedEpochSampler(len(dataset), seed, shuffle, flip=True, global_batch=batch,
                                                    rank=dist.rank, world_size=dist.world_size, patches=patches)
        batch = part.stop - part.start
    else:
        sampler = EpochSampler(len(dataset), seed, shuffle=shuffle, flip=train, patches=patches)
    loader = create_dataloader(dataset, batch, shuffle=shuffle, flip=train, num_workers=ds_cfg.num_workers, seed=seed,
                               sampler=sampler)
    return dataset, sampler, loader
