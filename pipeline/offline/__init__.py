"""Offline assets the project builds for itself: a synthetic webdataset and a tiny CLIP checkpoint."""
