"""Datasets as uint8 tensors in memory, and a batched-augmentation loader."""

from cnnzoo.data.cifar import DATASETS, Dataset, load_dataset
from cnnzoo.data.loader import Augment, TensorLoader, normalize
from cnnzoo.data.split import stratified_split

__all__ = [
    "DATASETS",
    "Augment",
    "Dataset",
    "TensorLoader",
    "load_dataset",
    "normalize",
    "stratified_split",
]
