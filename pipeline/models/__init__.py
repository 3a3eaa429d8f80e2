"""Model handling: open_clip models from pretrained tags or checkpoints, their fingerprints (`loading`), the
architectures the project ships (`configs/`), and the precision each computation runs in (`precision`)."""
