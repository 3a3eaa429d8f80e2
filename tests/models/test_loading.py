"""Models: one load per process for consecutive jobs, and a checkpoint's hash computed once."""
import json
import os
import shutil

import pytest
import torch

from pipeline.errors import PipelineError
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


def nllb_clip_tiny(folder) -> str:
    """An NLLB-CLIP-shaped architecture, registered from a config written here: a 1-layer ViT and a 1-layer
    M2M100 encoder behind NLLB's tokenizer (its 4 special tokens and its 202 language codes, no words)."""
    import open_clip
    from transformers import M2M100Config, M2M100Model, NllbTokenizer

    NllbTokenizer(src_lang="eng_Latn").save_pretrained(folder / "tokenizer")
    text = M2M100Config(vocab_size=256, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64)
    M2M100Model(text).save_pretrained(folder / "text")  # the "pretrained" encoder open_clip loads for its tower
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"hf_model_name": str(folder / "text"), "hf_tokenizer_name": str(folder / "tokenizer"),
                           "hf_proj_type": "linear", "hf_pooler_type": "cls_pooler", "context_length": 16}}
    (folder / "configs").mkdir()
    (folder / "configs" / "nllb-clip-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "configs")
    return "nllb-clip-tiny"


def test_the_language_reaches_nllb_clips_tokenizer_and_the_text_key(tmp_path):
    from pipeline.stages import embed
    from pipeline.stages.embed.texts import encode_strings

    arch = nllb_clip_tiny(tmp_path)
    assert loading.tokenizer_language(arch, "it") == "ita_Latn" and loading.tokenizer_language("ViT-B-32", "it") is None
    spec, registry = ModelSpec("nllb-tiny", arch, None), LoadedModels()
    italian = ModelLoader(spec, "cpu", registry, tokenizer_language="ita_Latn").get()
    tokenizer = italian.tokenizer.tokenizer
    assert italian.tokenizer(["una foto"])[0, 0] == tokenizer.convert_tokens_to_ids("ita_Latn")
    italian_text = encode_strings(italian, ["una foto di un gatto"], "fp32")
    german = ModelLoader(spec, "cpu", registry, tokenizer_language="deu_Latn").get()  # the same model, shared
    assert german is italian and german.tokenizer(["x"])[0, 0] == tokenizer.convert_tokens_to_ids("deu_Latn")
    assert not torch.allclose(encode_strings(german, ["una foto di un gatto"], "fp32"), italian_text)
    keys = {language: embed.classifier_key(embed.ModelKey({"arch": arch}, "fp32", {}, language), ["gatto"], ["{c}"])
            for language in ("ita_Latn", "deu_Latn", None)}
    assert len(set(keys.values())) == 3
    assert keys[None] == embed.classifier_key(embed.ModelKey({"arch": arch}, "fp32", {}), ["gatto"], ["{c}"])
    with pytest.raises(PipelineError, match="NLLB-CLIP has no source language for language=xx"):
        loading.tokenizer_language(arch, "xx")
