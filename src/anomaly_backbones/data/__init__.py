"""Datasets: where images and masks live (loaders) and how they become arrays (prepare)."""
