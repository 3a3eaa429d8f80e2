"""Where a catalog dataset lives: its public Hugging Face copy, or the same layout under a local mirror."""
from __future__ import annotations

import re
from pathlib import Path

HF_DATASETS = "https://huggingface.co/datasets"
# The Pascal VOC 2007 test archive (images, and the devkit's classification ground truth) where torchvision's VOC
# reader fetches it; its MD5 (b6e924de25625d8de591ea690078ad9f) is checked in conf/dataset/voc2007_multilabel.yaml.
VOC2007_TEST = "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar"
SUGAR_CREPE = "https://raw.githubusercontent.com/RAIVNLab/sugar-crepe/main/data"  # its seven <subset>.json
HUB_ORGS = ("nlphuji", "facebook")
# The annotation folders of the multilingual retrieval sets clip_benchmark reads (their images: each config's images).
MULTILINGUAL = {"xtd10": "https://raw.githubusercontent.com/adobe-research/Cross-lingual-Test-Dataset-XTD10/main",
                "xtd200": "https://raw.githubusercontent.com/visheratin/nllb-clip/main/data/xtd200",
                "flickr30k_200": "https://raw.githubusercontent.com/visheratin/nllb-clip/main/data/flickr30k-200",
                "crossmodal3600": "https://google.github.io/crossmodal-3600/web-data"}  # Hugging Face datasets read as DataComp reads nlphuji's: <org>/<name>
# DataComp's copies, djghosh/wds_<key>_test, hold the test split only; CLIP_benchmark's hold train too.
TEST_ONLY_COPY = re.compile(r"(^|/)wds_[^/]+_test(/|$)")


def holds_test_only(source: str, root: str) -> bool:
    """Whether a dataset's copy is one of DataComp's test-only ones (by its source, or its folder's name)."""
    return source == "datacomp" or bool(TEST_ONLY_COPY.search(root))


def wds_folder(source: str, key: str) -> str:
    """The repository/folder name of a webdataset copy, as DataComp and CLIP_benchmark name them."""
    if source == "datacomp":
        # DataComp drops the `fairness/` prefix: wds_dollar_street_test, wds_geode_test.
        return f"wds_{key.removeprefix('fairness/').replace('/', '-')}_test"
    if source == "clip_benchmark":
        return f"wds_{key.removeprefix('wds/').replace('/', '-')}"
    raise ValueError(f"no webdataset naming for source {source!r}")


def dataset_root(data_root: str | None, source: str, key: str) -> str:
    """`${dataset_root:${data_root},source,key}`: a local mirror path when data_root is set, else the public copy.

    - datacomp:       djghosh/wds_<key>_test        (mirror: <data_root>/wds_<key>_test)
    - clip_benchmark: clip-benchmark/wds_<key>      (mirror: <data_root>/wds_<key>)
    - nlphuji:        the HF dataset id nlphuji/<name> (mirror: <data_root>/<name>, a datasets-loadable folder)
    - tfds:           a TFDS data_dir               (<data_root>/tfds, else ~/tensorflow_datasets)
    - voc:            the VOC2007 test archive's URL (mirror: <data_root>/VOCdevkit, the archive unpacked in data_root)
    - sugar_crepe:    SugarCrepe's annotation folder URL (mirror: <data_root>/sugar_crepe, clip_benchmark's layout:
                      <subset>.json beside val2017/)
    - facebook:       the HF dataset id facebook/<name>, Winoground (mirror: <data_root>/<name>)
    - xtd10, xtd200, flickr30k_200: the annotation folder's URL (mirror: <data_root>/<name>, its images in images/)
    """
    mirror = Path(data_root).expanduser().resolve() if data_root else None
    if source in ("datacomp", "clip_benchmark"):
        folder = wds_folder(source, key)
        org = "djghosh" if source == "datacomp" else "clip-benchmark"
        return str(mirror / folder) if mirror else f"{HF_DATASETS}/{org}/{folder}/tree/main"
    if source in HUB_ORGS:
        name = key.split("/", 1)[-1]
        return str(mirror / name) if mirror else f"{source}/{name}"
    if source in MULTILINGUAL:
        return str(mirror / key.split("/", 1)[-1]) if mirror else MULTILINGUAL[source]
    if source == "sugar_crepe":
        return str(mirror / "sugar_crepe") if mirror else SUGAR_CREPE
    if source == "tfds":
        return str(mirror / "tfds") if mirror else str(Path("~/tensorflow_datasets").expanduser())
    if source == "voc":
        return str(mirror / "VOCdevkit") if mirror else VOC2007_TEST
    raise ValueError(f"unknown dataset source {source!r}; use datacomp, clip_benchmark, nlphuji, facebook, tfds, "
                     f"voc or sugar_crepe")


def public_copy(source: str, key: str) -> str | None:
    """Where a catalog dataset's public copy is (what a missing mirror folder should hold); None for local data."""
    try:
        return dataset_root(None, source, key) if source != "tfds" else None
    except ValueError:
        return None
