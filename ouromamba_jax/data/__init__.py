"""Datasets: CIFAR-10 and ImageNet-format folders, decoded once into a cache."""
