"""Tiny transformers checkpoints built offline from configs: a CLIPModel whose tokenizer is made of open_clip's BPE
vocabulary, a SiglipModel with a sentencepiece model trained here, a Siglip2Model (NaFlex); and a CLIPModel whose
weights are converted from an open_clip CLIP, parameter by parameter."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
CORPUS = ["a photo of a circle.", "a drawing of a red square.", "a blurry photo of the triangle.", "a star",
          "a green ring on a white background", "an ellipse", "a small blue cross", "the heart is large"]


def clip_vocabulary(folder: Path) -> tuple[Path, Path]:
    """CLIP's vocab.json and merges.txt from open_clip's `bpe_simple_vocab_16e6.txt.gz`, in the order
    `open_clip.tokenizer.SimpleTokenizer` builds its encoder (so every id is open_clip's), under the special tokens'
    names the Hub's CLIP tokenizers use."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    units = list(bytes_to_unicode().values())
    vocab = units + [unit + "</w>" for unit in units] + ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def clip_config(embed: int = 32, image_size: int = 32, patch: int = 8, layers: int = 2, heads: int = 2,
                context: int = 20, act: str = "quick_gelu"):
    from transformers import CLIPConfig

    text = {"vocab_size": 49408, "hidden_size": embed, "intermediate_size": 4 * embed, "num_hidden_layers": layers,
            "num_attention_heads": heads, "max_position_embeddings": context, "hidden_act": act,
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    vision = {"hidden_size": embed, "intermediate_size": 4 * embed, "num_hidden_layers": layers,
              "num_attention_heads": heads, "image_size": image_size, "patch_size": patch, "hidden_act": act}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed)


def save_clip_checkpoint(folder: Path, model, context: int, image_size: int = 32) -> Path:
    """`model` (a CLIPModel) with a CLIP tokenizer and image processor, as save_pretrained writes a checkpoint."""
    from transformers import CLIPImageProcessor, CLIPTokenizer

    vocab, merges = clip_vocabulary(folder.with_name(folder.name + "-vocabulary"))
    CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=context).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                       image_mean=OPENAI_MEAN, image_std=OPENAI_STD).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def tiny_clip(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPModel

    torch.manual_seed(seed)
    return save_clip_checkpoint(folder, CLIPModel(clip_config()).eval(), context=20)


def sentencepiece_model(folder: Path, vocab_size: int = 96) -> Path:
    """A unigram sentencepiece model trained on a few phrases, with SigLIP's pieces (`<unk>`, `</s>`)."""
    import sentencepiece

    folder.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_prefix=str(folder / "spiece"), vocab_size=vocab_size,
        hard_vocab_limit=False, unk_id=2, bos_id=-1, eos_id=1, pad_id=0, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", minloglevel=2, num_threads=1)
    return folder / "spiece.model"


def tiny_siglip(folder: Path, seed: int = 0, context: int = 16) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer

    tokenizer = SiglipTokenizer(vocab_file=str(sentencepiece_model(folder / "spm")), model_max_length=context)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = SiglipConfig(text_config={**tower, "vocab_size": len(tokenizer), "max_position_embeddings": context,
                                       "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                                       "bos_token_id": None},
                          vision_config={**tower, "image_size": 32, "patch_size": 8})
    torch.manual_seed(seed)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    SiglipModel(config).eval().save_pretrained(folder)
    return folder


def tiny_siglip2(folder: Path, seed: int = 0, context: int = 16) -> Path:
    """A NaFlex SigLIP 2: images become up to 16 patches of 8 pixels at their own aspect ratio; its Gemma-style
    tokenizer knows single characters only."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    characters = sorted(set("".join(CORPUS).replace(" ", "\u2581")))
    tokenizer = Siglip2Tokenizer(vocab={piece: i for i, piece in enumerate(specials + characters)}, merges=[],
                                 model_max_length=context)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = Siglip2Config(text_config={**tower, "vocab_size": len(tokenizer), "max_position_embeddings": context,
                                        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2},
                           vision_config={**tower, "patch_size": 8, "num_patches": 16})
    torch.manual_seed(seed)
    tokenizer.save_pretrained(folder)
    Siglip2ImageProcessor(patch_size=8, max_num_patches=16).save_pretrained(folder)
    Siglip2Model(config).eval().save_pretrained(folder)
    return folder


# -- open_clip -> CLIPModel --------------------------------------------------------------------------------------
def converted_state(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """An open_clip CLIP's state dict under CLIPModel's parameter names: nn.MultiheadAttention's packed
    `in_proj` split into q, k, v; `proj` matrices (applied as x @ P) as Linear weights (x @ W.T)."""
    out = {"logit_scale": state["logit_scale"],
           "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
           "text_model.final_layer_norm.weight": state["ln_final.weight"],
           "text_model.final_layer_norm.bias": state["ln_final.bias"],
           "text_projection.weight": state["text_projection"].T.contiguous(),
           "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
           "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
           "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
           "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
           "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
           "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
           "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
           "visual_projection.weight": state["visual.proj"].T.contiguous()}
    for source, target in (("transformer", "text_model.encoder"), ("visual.transformer", "vision_model.encoder")):
        for i in range(layers):
            block, layer = f"{source}.resblocks.{i}", f"{target}.layers.{i}"
            for name in ("weight", "bias"):
                for part, piece in zip(("q", "k", "v"), state[f"{block}.attn.in_proj_{name}"].chunk(3)):
                    out[f"{layer}.self_attn.{part}_proj.{name}"] = piece.contiguous()
                out[f"{layer}.self_attn.out_proj.{name}"] = state[f"{block}.attn.out_proj.{name}"]
                out[f"{layer}.layer_norm1.{name}"] = state[f"{block}.ln_1.{name}"]
                out[f"{layer}.layer_norm2.{name}"] = state[f"{block}.ln_2.{name}"]
                out[f"{layer}.mlp.fc1.{name}"] = state[f"{block}.mlp.c_fc.{name}"]
                out[f"{layer}.mlp.fc2.{name}"] = state[f"{block}.mlp.c_proj.{name}"]
    return out


def converted_tiny_clip(folder: Path, checkpoint: Path) -> Path:
    """The bundled tiny open_clip model (pipeline/models/configs/tiny-clip.json: plain GELU, 2 layers, width 64)
    as a CLIPModel checkpoint with the same tokenizer vocabulary and image transform."""
    import open_clip
    from transformers import CLIPModel

    from pipeline.models.loading import MODEL_CONFIG_DIR, register_project_architectures

    register_project_architectures()
    shape = json.loads((MODEL_CONFIG_DIR / "tiny-clip.json").read_text())
    vision, text = shape["vision_cfg"], shape["text_cfg"]
    assert vision["width"] == text["width"] == shape["embed_dim"] and vision["layers"] == text["layers"]
    assert vision["width"] // vision["head_width"] == text["heads"]
    source = open_clip.create_model("tiny-clip", pretrained=str(checkpoint))
    config = clip_config(embed=shape["embed_dim"], image_size=vision["image_size"], patch=vision["patch_size"],
                         layers=vision["layers"], heads=text["heads"], context=text["context_length"], act="gelu")
    model = CLIPModel(config).eval()
    missing, unexpected = model.load_state_dict(converted_state(source.state_dict(), vision["layers"]), strict=False)
    assert not unexpected and all("position_ids" in name for name in missing), (missing, unexpected)
    return save_clip_checkpoint(folder, model, context=text["context_length"], image_size=vision["image_size"])
