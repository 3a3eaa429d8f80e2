"""`python -m pipeline.bench`: time a cold sweep, the same sweep fully cached, and one new prompt set on a warm cache.

Each sweep runs `python -m pipeline -m ...` in a subprocess against a scratch tracking store, so the
figures include what a user waits for (interpreter start, imports, MLflow); the ratios compare them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep(outputs: Path, assets: Path, prompts: str, extra: list[str]) -> float:
    env = {**os.environ, "CLIP_TABLES_OUTPUTS": str(outputs)}
    args = [sys.executable, "-m", "pipeline", "-m", f"prompts={prompts}",
            f"dataset.root={assets / 'data' / 'shapes'}", f"model.pretrained={assets / 'models' / 'tiny-clip.pt'}", *extra]
    start = time.perf_counter()
    subprocess.run(args, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--assets", type=Path, default=Path("outputs"), help="where `make assets` put data/ and models/")
    parser.add_argument("--prompts", default="classname,a_photo_of,dataset,simple_imagenet")
    parser.add_argument("--extra-prompt", default="openai_imagenet")
    args, extra = parser.parse_known_args()
    assets = args.assets.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        outputs = Path(scratch)
        cold = sweep(outputs, assets, args.prompts, extra)
        cached = sweep(outputs, assets, args.prompts, extra)
        added = sweep(outputs, assets, f"{args.prompts},{args.extra_prompt}", extra)
    jobs = len(args.prompts.split(","))
    print(f"cold sweep ({jobs} prompt sets):        {cold:7.2f} s")
    print(f"same sweep, fully cached:             {cached:7.2f} s   ({cold / cached:.2f}x faster than cold)")
    print(f"sweep + 1 new prompt set ({args.extra_prompt}): {added:7.2f} s   ({cold / added:.2f}x faster than cold)")


if __name__ == "__main__":
    main()
