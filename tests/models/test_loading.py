"""Models: one load per process for consecutive jobs, and a checkpoint's hash computed once."""
import json
import os
import shutil

import torch

from pipeline.models import loading
from pipeline.models.loading import LoadedModels, ModelLoader, ModelSpec, checkpoint_digest, checksum_records


def test_consecutive_loaders_of_one_model_share_it(tiny_checkpoint, tmp_path):
    registry = LoadedModels()
    spec = ModelSpec("tiny", "tiny-clip", str(tiny_checkpoint))
    first = ModelLoader(spec, torch.device("cpu"), registry).get()
    assert ModelLoader(spec, torch.device("cpu"), registry).get() is first
    copy = tmp_path / "other.pt"
    shutil.copy(tiny_checkpoint, copy)
    other = ModelLoader(ModelSpec("tiny", "tiny-clip", str(copy)), torch.device("cpu"), registry).get()
    assert other is not first and registry.loaded is other  # one model held at a time


def test_checkpoint_hash_is_computed_once_while_size_and_mtime_hold(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    checkpoint = tmp_path / "ckpt.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    digest = checkpoint_digest(checkpoint)
    record = checksum_records(checkpoint)[0]
    assert json.loads(record.read_text())["sha256"] == digest

    def no_hashing(path):
        raise AssertionError("hashed again")

    monkeypatch.setattr(loading, "sha256_file", no_hashing)
    assert checkpoint_digest(checkpoint) == digest
    monkeypatch.undo()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with open(checkpoint, "r+b") as handle:  # same size, new content and mtime
        handle.write(b"\0" * 8)
    os.utime(checkpoint, ns=(1, 1))
    assert checkpoint_digest(checkpoint) != digest


def test_an_unwritable_folder_remembers_the_hash_in_the_users_cache(tiny_checkpoint, tmp_path, monkeypatch):
    checkpoint = tmp_path / "ckpt.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # a record under it cannot be written, whoever runs the test
    user_cache = tmp_path / "home" / "record.json"
    monkeypatch.setattr(loading, "checksum_records", lambda path: [blocker / "ckpt.pt.sha256.json", user_cache])
    digest = checkpoint_digest(checkpoint)
    assert json.loads(user_cache.read_text())["sha256"] == digest
