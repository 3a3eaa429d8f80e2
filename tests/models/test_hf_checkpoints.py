"""transformers checkpoints' files: found in a folder or in the Hub cache (offline), fingerprinted by content (a Hub
id and a copy of its files share the key; any weight or setting changed moves it), refused in one line otherwise."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.errors import PipelineError
from pipeline.models import hf_checkpoints
from pipeline.models.loading import ModelSpec
from tests.models import tiny_hf

REPO_ID = "tiny-org/tiny-clip"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tiny_hf.tiny_clip(tmp_path_factory.mktemp("checkpoint") / "tiny-clip")


def spec(pretrained: str, cache_dir: str | None = None, **model) -> ModelSpec:
    return ModelSpec.from_cfg(OmegaConf.create({"name": "m", "library": "transformers", "arch": "CLIPModel",
                                                "pretrained": pretrained, **model}), cache_dir)


def hub_cache(root: Path, files: Path, repo_id: str = REPO_ID) -> Path:
    """`files` laid out as huggingface_hub keeps a downloaded snapshot: blobs named by their hash (the SHA-256 for
    large files, as the Hub's LFS names them; git's SHA-1 for small ones), the snapshot's links, refs/main."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in sorted(p for p in files.iterdir() if p.is_file() and not p.name.endswith(".sha256.json")):
        data = path.read_bytes()
        large = path.suffix in (".safetensors", ".bin")
        name = hashlib.sha256(data).hexdigest() if large else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / name).write_bytes(data)
        (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


def test_a_folder_copy_and_the_hub_cache_share_the_fingerprint_which_follows_content(folder, tmp_path):
    local = spec(str(folder)).fingerprint
    assert local["arch"] == "CLIPModel" and local["library"] == "transformers"
    assert set(local["libraries"]) == {"transformers", "tokenizers", "sentencepiece"}
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(folder, copy)
    assert spec(str(copy)).fingerprint == local  # the content, not the path
    cache = hub_cache(tmp_path / "hub", folder)
    from_hub = spec(REPO_ID, str(cache))
    assert from_hub.fingerprint == local and from_hub.pretrained_label == REPO_ID and not from_hub.is_local_checkpoint
    assert not list((cache / "models--tiny-org--tiny-clip").rglob("*.sha256.json"))  # nothing written into the cache

    config = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**config, "crop_size": {"height": 24, "width": 24}}))
    moved = spec(str(copy)).fingerprint
    assert moved["settings"] != local["settings"] and moved["weights"] == local["weights"]
    with open(copy / "model.safetensors", "r+b") as weights:
        weights.seek(-4, 2)
        weights.write(b"\0\0\0\1")
    assert spec(str(copy)).fingerprint["weights"] != local["weights"]
    assert spec(str(folder), context_length=12).fingerprint == {**local, "context_length": 12}


def test_a_checkpoint_missing_from_the_hub_cache_offline_is_one_line(tmp_path):
    """HF_HUB_OFFLINE is read once, when huggingface_hub is imported: a child process sees it as a job would."""
    code = ("from omegaconf import OmegaConf\nfrom pipeline.models.loading import ModelSpec\n"
            f"spec = ModelSpec.from_cfg(OmegaConf.create({{'name': 'm', 'library': 'transformers', 'arch': "
            f"'CLIPModel', 'pretrained': 'nobody/absent'}}), {str(tmp_path)!r})\n"
            "try:\n    spec.fingerprint\nexcept Exception as exc:\n    print(type(exc).__name__, exc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.stdout.strip() == (f"PipelineError transformers checkpoint nobody/absent is not in the Hub cache "
                                   f"{tmp_path} and HF_HUB_OFFLINE is set; download it where there is a network (hf "
                                   f"download nobody/absent) and copy the cache, or set model.pretrained to a local "
                                   f"folder"), done.stderr[-2000:]


def test_a_folder_without_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="holds no transformers checkpoint"):
        spec(str(tmp_path / "empty")).fingerprint


def test_what_a_job_fetches_of_a_hub_repository():
    listed = ["README.md", "config.json", "tokenizer.json", "vocab.json", "merges.txt", "preprocessor_config.json",
              "model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "special_tokens_map.json"]
    assert hf_checkpoints.wanted_files(listed) == ["config.json", "preprocessor_config.json", "tokenizer.json",
                                                   "special_tokens_map.json", "vocab.json", "merges.txt",
                                                   "model.safetensors"]
    sharded = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "pytorch_model-00001-of-00002.bin"]
    assert hf_checkpoints.wanted_files(sharded)[1:] == sharded[1:4]
    with pytest.raises(PipelineError, match="no PyTorch weights"):
        hf_checkpoints.wanted_files(["config.json", "tf_model.h5"])


def test_hub_ids_and_folders_are_told_apart(tmp_path):
    assert not hf_checkpoints.is_local("openai/clip-vit-base-patch32") and not hf_checkpoints.is_local("gpt2")
    assert all(hf_checkpoints.is_local(path) for path in ("./model", "/abs/model", "runs/a/checkpoint-500"))
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert hf_checkpoints.is_local(str(tmp_path / "org" / "name"))
    assert hf_checkpoints.label(str(tmp_path / "org" / "name")) == "name"
