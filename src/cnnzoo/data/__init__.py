"""Datasets as uint8 tensors in memory, and a batched-augmentation loader."""

from cnnzoo.data.cifar import DATASETS, load_dataset
from cnnzoo.data.dataset import Dataset
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
