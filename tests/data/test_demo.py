"""``python -m scl_fast.data.demo``: the same bytes for the same seed, other bytes for another seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

from scl_fast.data.demo import main

SMALL = ["--train-images", "9", "--train-videos", "3", "--val-images", "3", "--val-videos", "2", "--size", "32"]


def _shards(folder: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".tar"):
            with open(os.path.join(folder, name), "rb") as f:
                out[name] = f.read()
    return out


def test_demo_cli_is_deterministic(tmp_path, capsys) -> None:
    a, b, c = (str(tmp_path / n) for n in "abc")
    run = subprocess.run([sys.executable, "-m", "scl_fast.data.demo", "--out", a, "--seed", "7", *SMALL],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "RuntimeWarning" not in run.stderr, run.stderr
    specs = json.loads(run.stdout.strip().splitlines()[-1])
    assert specs["train"] == os.path.join(a, "train-{00000..00000}.tar")
    main(["--out", b, "--seed", "7", *SMALL])
    main(["--out", c, "--seed", "8", *SMALL])
    capsys.readouterr()
    first, second, other = _shards(a), _shards(b), _shards(c)
    assert sorted(first) == ["train-00000.tar", "val-00000.tar"]
    assert first == second, "same seed, different bytes"
    assert all(first[n] != other[n] for n in first), "another seed gave the same corpus"
    with tarfile.open(os.path.join(a, "train-00000.tar")) as tar:
        names = tar.getnames()
    assert sum(n.endswith(".jpg") for n in names) == 9 and sum(n.endswith(".webm") for n in names) == 3
    assert sum(n.endswith(".txt") for n in names) == 12
    # Run again on a finished corpus: reused, not rewritten.
    main(["--out", b, "--seed", "7", *SMALL])
    assert _shards(b) == second
