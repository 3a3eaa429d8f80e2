"""The analyses the aggregate step draws from records: prompt-engineering gains, ensembling curves, the heatmap
matrix, metrics over training, and the HTML report."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.jobs import job_run


def test_checkpoint_position_from_the_file_name_or_the_checkpoint(tmp_path: Path):
    run = tmp_path / "logs" / "my-run" / "checkpoints"
    run.mkdir(parents=True)
    assert job_run.checkpoint_position(run / "epoch_7.pt") == {"checkpoint_epoch": "7", "checkpoint_run": "my-run"}
    assert job_run.checkpoint_position(tmp_path / "step-1200.pt")["checkpoint_step"] == "1200"
    saved = tmp_path / "latest.pt"
    torch.save({"epoch": 3, "step": 900, "state_dict": {"w": torch.zeros(2)}}, saved)
    assert job_run.checkpoint_position(saved) == {"checkpoint_epoch": "3", "checkpoint_step": "900",
                                                  "checkpoint_run": tmp_path.name}
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    assert job_run.checkpoint_position(plain) == {}
    assert job_run.checkpoint_position(tmp_path / "clip_multistep2.pt") == {}  # a name, not a position
