"""Datasets, samplers, collation and the DataLoader, following ``torch.utils.data``.

Shuffling draws ``tracejit.randperm`` from the loader's generator (or the default one), so
``tracejit.manual_seed`` makes every epoch's order reproducible; ``num_workers=N`` loads in N processes
with the same batches in the same order.
"""

from ._worker import WorkerInfo, get_worker_info
from .collate import default_collate, default_convert
from .dataloader import DataLoader
from .dataset import ChainDataset, ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset, random_split
from .distributed import DistributedSampler
from .sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler, SubsetRandomSampler

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "ConcatDataset", "ChainDataset", "Subset", "random_split",
           "Sampler", "SequentialSampler", "RandomSampler", "SubsetRandomSampler", "BatchSampler", "DataLoader",
           "default_collate", "default_convert", "get_worker_info", "WorkerInfo", "DistributedSampler"]
