"""The CLIP paper's models and 27 datasets as this project names them, the other names its datasets go by in
CLIP_benchmark's readers, and its linear probe's protocol beside CLIP_benchmark's."""
from __future__ import annotations

PAPER_MODELS = {"RN50": "RN50", "RN101": "RN101", "RN50x4": "RN50x4", "RN50x16": "RN50x16", "RN50x64": "RN50x64",
                "ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14", "ViT-L/14@336": "ViT-L-14-336"}
# The CLIP paper's 27 datasets (Tables 10-11, in its order) as the catalog names them, with Table 9's metric.
PAPER_DATASETS = {
    "Food101": ("food101", "acc1"), "CIFAR10": ("cifar10", "acc1"), "CIFAR100": ("vtab/cifar100", "acc1"),
    "Birdsnap": ("birdsnap", "acc1"), "SUN397": ("sun397", "acc1"), "StanfordCars": ("cars", "acc1"),
    "FGVCAircraft": ("fgvc_aircraft", "mean_per_class_recall"), "VOC2007": ("voc2007_multilabel", "map_11point"),
    "DTD": ("vtab/dtd", "acc1"), "OxfordPets": ("vtab/pets", "mean_per_class_recall"),
    "Caltech101": ("vtab/caltech101", "mean_per_class_recall"), "Flowers102": ("vtab/flowers", "mean_per_class_recall"),
    "MNIST": ("mnist", "acc1"), "FER2013": ("fer2013", "acc1"), "STL10": ("stl10", "acc1"),
    "EuroSAT": ("vtab/eurosat", "acc1"), "RESISC45": ("vtab/resisc45", "acc1"), "GTSRB": ("gtsrb", "acc1"),
    "KITTI": ("vtab/kitti_closest_vehicle_distance", "acc1"), "Country211": ("country211", "acc1"),
    "PCam": ("vtab/pcam", "acc1"), "UCF101": ("ucf101", "acc1"), "Kinetics700": ("kinetics700", "mean_top1_top5"),
    "CLEVRCounts": ("vtab/clevr_count_all", "acc1"), "HatefulMemes": ("hateful_memes", "roc_auc"),
    "RenderedSST2": ("renderedsst2", "acc1"), "ImageNet": ("imagenet1k", "acc1"),
}
# Datasets no public source gives with today's libraries, and why (conf/suite/clip_paper.yaml lists the same).
# `suite=clip_paper` sweeps none of them; a result read from a file that has one fills its column and is compared
# with the paper's cell like any other.
UNAVAILABLE = {
    "birdsnap": "its images are Flickr URLs, many of them gone, and no complete public copy exists",
    "ucf101": "a video dataset: the paper classified each clip's middle frame, which no image reader here extracts",
    "kinetics700": "a video dataset of YouTube clips, many removed: the paper used each clip's middle frame",
    "hateful_memes": "Facebook no longer distributes it (its challenge data was withdrawn)",
}
# Table 9's names for the same datasets, in the same order.
TABLE9_NAMES = ["Food-101", "CIFAR-10", "CIFAR-100", "Birdsnap", "SUN397", "Stanford Cars", "FGVC Aircraft",
                "Pascal VOC 2007 Classification", "Describable Textures", "Oxford-IIIT Pets", "Caltech-101",
                "Oxford Flowers 102", "MNIST", "Facial Emotion Recognition 2013", "STL-10", "EuroSAT", "RESISC45",
                "GTSRB", "KITTI", "Country211", "PatchCamelyon", "UCF101", "Kinetics700", "CLEVR Counts",
                "Hateful Memes", "Rendered SST2", "ImageNet"]
# The paper's datasets under the other names CLIP_benchmark reads them by (its torchvision readers, VTAB's and
# TFDS's copies; `wds/` before any of them is its webdataset of the same), by the name in PAPER_DATASETS. Single-
# label `voc2007` is another task, not a copy of the paper's VOC2007 (tests/reports/test_clip_paper.py walks every
# name CLIP_benchmark knows against these columns).
PAPER_COPIES = {"vtab/food101": "food101", "vtab/cifar10": "cifar10", "cifar100": "vtab/cifar100",
                "vtab/sun397": "sun397", "vtab/cars": "cars", "dtd": "vtab/dtd", "tfds/dtd": "vtab/dtd",
                "pets": "vtab/pets", "caltech101": "vtab/caltech101", "flowers": "vtab/flowers",
                "eurosat": "vtab/eurosat", "tfds/eurosat": "vtab/eurosat", "pcam": "vtab/pcam",
                "imagenet1k-unverified": "imagenet1k"}

# The probes behind Table 10, as their sources describe them (the paper's appendix A.3; clip_benchmark 1.6.2's
# metrics/linear_probe.py and cli.py): a result file of CLIP_benchmark's `--task linear_probe` is its own probe.
PAPER_PROBE = ("L-BFGS logistic regression (scikit-learn, at most 1,000 iterations) on pre-projection features, its "
               "L2 strength searched over 1e-6…1e6 on a validation split")
CLIP_BENCHMARK_PROBE = ("a linear layer trained with AdamW (cosine schedule without warm-up, --fewshot_epochs 10 and "
                        "--fewshot_lr 0.1 unless changed, batch 64, under autocast) on L2-normalized embeddings, its "
                        "weight decay searched over 1e-6…1e2 by validation accuracy only when a validation split is "
                        "given (--val_split or --val_proportion; otherwise 0), then refitted on train plus validation")


def paper_dataset(name: str) -> str:
    """The paper's (the catalog's) name of a dataset read under another name (`wds/vtab/cifar10` -> `cifar10`);
    any other name as it is."""
    name = name.removeprefix("wds/")
    return PAPER_COPIES.get(name, name)


def probe_cause(metrics: dict[str, float] | None = None) -> str:
    """Why a CLIP_benchmark probe's cell may differ from the paper's: the two protocols, with the epochs and weight
    decay its result file records."""
    metrics = metrics or {}
    recorded = ", ".join(f"{label} {metrics[name]:g}" for name, label in (("epochs", "epochs"),
                                                                         ("weight_decay", "weight decay"))
                         if name in metrics)
    return (f"probe: CLIP_benchmark's AdamW{f' ({recorded})' if recorded else ''}, not the paper's L-BFGS "
            f"logistic regression")
