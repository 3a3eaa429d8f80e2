"""The benchmarks' fixtures (`make bench` is too long for `make test`): the data they generate is readable and in
the layout the pipeline reads, and generating it prints nothing."""
import tarfile

from pipeline.bench import fixtures


def test_bench_fixtures_write_quiet_webdatasets(tmp_path, capsys):
    shapes = fixtures.shapes(tmp_path / "shapes", images=24, seed=0)
    named = fixtures.named_classes(tmp_path / "named", ["tench", "goldfish"], per_class=3, seed=0, size=32)
    assert capsys.readouterr() == ("", "")
    for root, samples in ((shapes, 24), (named, 6)):
        shards = sorted((root / "test").glob("*.tar"))
        with_images = sum(1 for shard in shards for name in tarfile.open(shard).getnames()
                          if name.endswith((".png", ".jpg", ".webp")))
        assert shards and with_images == samples
    assert (named / "classnames.txt").read_text().split() == ["tench", "goldfish"]
