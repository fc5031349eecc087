"""Data: dataset readers, metadata validation, augmentation, loaders and synthetic scenes."""
