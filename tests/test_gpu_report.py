"""``python -m benchmarks.gpu_report``: exits cleanly without a GPU, and every section's code runs (``--cpu-smoke``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import scl_kernels
from benchmarks import gpu_report

ROOT = Path(__file__).resolve().parents[1]


def test_no_gpu_says_so_and_exits_0(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the no-GPU path, even on a machine that has one
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_report", "--out", str(tmp_path / "r")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert gpu_report.NO_GPU_MESSAGE in proc.stdout
    assert not (tmp_path / "r").exists()  # nothing measured, nothing written


def test_unknown_section_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        gpu_report.main(["--cpu-smoke", "--sections", "ceilings,attenshun"])
    assert exc.value.code == 2
    assert "attenshun" in capsys.readouterr().err


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One full smoke run (every section, tiny CPU shapes), shared by the checks below."""
    out = tmp_path_factory.mktemp("smoke")
    assert gpu_report.main(["--cpu-smoke", "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text()), out


def test_smoke_writes_json_markdown_png(smoke: tuple[dict, Path]) -> None:
    result, out = smoke
    sections = {r["section"] for r in result["rows"]}
    assert {"ceilings", "attention", "host", "info_nce", "random_masking", "mlm_mask", "scl_text_mask",
            "step"} <= sections
    assert result["host_profile"] and all(r["own_us"] > 0 for r in result["host_profile"])
    host = {(r["impl"], r["pass_"]) for r in result["rows"] if r["section"] == "host" and r.get("ms", 0) > 0}
    assert {(impl, p) for impl in ("scl_auto", "scl_auto/JITFunction.run", "sdpa") for p in ("fwd", "fwd+bwd")} <= host
    md = (out / "report.md").read_text()
    for section in sections:
        assert f"## {section}" in md
    assert "command: `python -m benchmarks.gpu_report --cpu-smoke" in md
    assert "## Summary" in md and "- step tiny_b2: fused schedule" in md and "- attention text_self_pad fwd+bwd" in md
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert result["ceilings"]["copy_gbps"] > 0 and result["ceilings"]["matmul_tflops"] > 0
    # no triton kernel on the CPU: the autotuners of attention and info_nce are listed with nothing chosen
    assert result["autotuned"] == dict.fromkeys(("fwd", "bwd_dkdv", "bwd_dq", "info_nce_fwd", "info_nce_bwd"), {})


def test_autotuned_configs_lists_each_choice() -> None:
    """What a GPU run's autotuners chose goes into report.json and report.md, one row per autotune key."""
    import triton

    chosen = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3, maxnreg=128)
    attention = SimpleNamespace(_attn_fwd=SimpleNamespace(cache={(512, 1024, 64, True): chosen}),
                                _attn_bwd_dkdv=SimpleNamespace(cache={}), _attn_bwd_dq=SimpleNamespace())
    picks = gpu_report.autotuned_configs(SimpleNamespace(attention=attention))
    assert picks == {"fwd": {"(512, 1024, 64, True)": str(chosen)}, "bwd_dkdv": {}, "bwd_dq": {}}
    assert "maxnreg: 128" in picks["fwd"]["(512, 1024, 64, True)"]
    env = {"torch": "t", "triton": "x", "cuda": "c", "date_utc": "d", "command": "c"}
    md = gpu_report.to_markdown({"environment": env, "ceilings": {}, "notes": [], "rows": [], "wall_s": 1.0,
                                 "autotuned": picks})
    assert "## Autotuned configs" in md and "| fwd | `(512, 1024, 64, True)` |" in md


def test_autotune_timings_of_the_new_key_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each candidate's time goes to the one key an autotuner benchmarked since the snapshot; a kernel whose
    cache did not grow (its timings are an older key's) or grew by two is left out. The fp16 check runs with
    autotuning off, and the switch is restored afterwards."""
    import triton

    fast, slow = (triton.Config({"BLOCK_M": m}, num_warps=4, num_stages=3) for m in (64, 128))
    fwd = SimpleNamespace(cache={"old": fast, "new": fast}, configs_timings={slow: [0.5, 0.4, 0.6], fast: [0.2]})
    dq = SimpleNamespace(cache={"old": fast}, configs_timings={fast: [0.1]})
    dkdv = SimpleNamespace(cache={"a": fast, "b": slow}, configs_timings={fast: 0.3})
    got = gpu_report.new_autotune_timings({"fwd": fwd, "bwd_dq": dq, "bwd_dkdv": dkdv},
                                          {"fwd": {"old"}, "bwd_dq": {"old"}, "bwd_dkdv": set()})
    assert got == {"fwd": {"new": {str(fast): 0.2, str(slow): 0.5}}}
    assert list(got["fwd"]["new"]) == [str(fast), str(slow)]  # fastest first
    env = {"torch": "t", "triton": "x", "cuda": "c", "date_utc": "d", "command": "c"}
    md = gpu_report.to_markdown({"environment": env, "ceilings": {}, "notes": [], "rows": [], "wall_s": 1.0,
                                 "autotune_ms": got})
    assert f"| fwd | `new` | `{fast}` | 0.2 |" in md

    monkeypatch.setenv("SCL_KERNELS_AUTOTUNE", "1")
    from scl_kernels._launch import autotune_enabled

    with gpu_report._autotune_off():
        assert not autotune_enabled()
    assert autotune_enabled()
    monkeypatch.delenv("SCL_KERNELS_AUTOTUNE")
    with gpu_report._autotune_off():
        assert not autotune_enabled()
    assert "SCL_KERNELS_AUTOTUNE" not in os.environ


def test_smoke_rows_are_measured_and_correct(smoke: tuple[dict, Path]) -> None:
    result, _ = smoke
    broken = [r for r in result["rows"] if str(r.get("status", "")).startswith(("error", "MISMATCH"))]
    assert not broken, broken
    attn = [r for r in result["rows"] if r["section"] == "attention" and r.get("status") == "ok"]
    impls = {r["impl"] for r in attn}
    assert {"scl_auto", "sdpa", "sdpa_best", "flex", "eager"} <= impls
    # the tuned peers: every configuration tried is a row, each masked case's fastest marked per pass
    tried = [r for r in result["rows"] if r["section"] == "attention_peers"]
    fastest = {(r["case"], r["impl"], r["pass_"]) for r in tried if r["status"] == "ok (fastest)"}
    assert {(c, "sdpa_best", p) for c in ("text_self_pad", "video_frames4_pad") for p in ("fwd", "fwd+bwd")} <= fastest
    assert ("video_frames4_pad", "flex", "fwd") in fastest  # forward only: FlexAttention has no CPU backward
    assert len({r["config"] for r in tried if r["impl"] == "flex" and r["case"] == "video_frames4_pad"}) >= 4
    assert all(r.get("blocks") for r in tried if r["impl"] == "flex" and r["case"] == "video_frames4_pad")
    xformers = [r for r in result["rows"] if r["section"] == "attention" and r["impl"] == "xformers"]
    assert xformers and all("\n" not in r["status"] for r in xformers)
    for r in attn:
        assert r["ms"] > 0 and r["tflops"] > 0 and r["frac_ceiling"] > 0
        # fp32 everywhere in the smoke run: every backend within fp32 rounding of the fp64 reference
        assert math.isfinite(r["rel_err"]) and r["rel_err"] < 1e-4, r
    nce = [r for r in result["rows"] if r["section"] == "info_nce" and r.get("status") == "ok"]
    assert len(nce) == 4 and all(r["rel_err"] < 1e-4 for r in nce), nce
    for section in ("random_masking", "mlm_mask", "scl_text_mask"):
        fused = [r for r in result["rows"] if r["section"] == section and r["impl"].startswith("scl")]
        assert fused and all(r["exact"] is True and r["gbps"] > 0 for r in fused), fused
    steps = {r["impl"]: r for r in result["rows"] if r["section"] == "step"}
    assert set(steps) == {"eager", "fused/naive"}, steps  # the smoke run: the eager whole step, and the schedules
    assert steps["eager"]["status"] == "ok" and steps["eager"]["samples_per_s"] > 0 and steps["eager"]["ms"] > 0
    assert math.isfinite(steps["eager"]["loss"]) and steps["eager"]["pass_"] == "step"
    # same step inputs, dropout off, fp32: the two schedules give the same loss
    assert steps["fused/naive"]["speedup"] > 0 and steps["fused/naive"]["loss_diff"] <= 1e-4


def test_missing_and_failing_kernels_are_reported_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(scl_kernels, "masked_attention", raising=False)

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(scl_kernels, "info_nce", broken)
    rc = gpu_report.main(["--cpu-smoke", "--out", str(tmp_path), "--sections", "attention,info_nce"])
    assert rc == 0
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    attn_fused = [r for r in rows if r["section"] == "attention" and r["impl"].startswith("scl")]
    assert attn_fused and all(r["status"].startswith("missing") for r in attn_fused)
    assert any(r["section"] == "attention" and r["impl"] == "sdpa" and r["status"] == "ok" for r in rows)
    nce_fused = [r for r in rows if r["section"] == "info_nce" and r["impl"].startswith("scl")]
    assert nce_fused and all("kernel exploded" in r["status"] for r in nce_fused)
    assert any(r["section"] == "info_nce" and r["impl"] == "eager" and r["status"] == "ok" for r in rows)


@pytest.mark.parametrize("shape", gpu_report.S.ATTN_CPU + gpu_report.S.ATTN_GPU[:3], ids=lambda s: s.name)
def test_flex_mask_and_flop_count_match_the_dense_mask(shape: gpu_report.S.AttnShape) -> None:
    """The FlexAttention block mask is the kernel's pattern, and FLOPs count exactly the visible pairs."""
    from torch.nn.attention.flex_attention import create_mask

    from scl_kernels.reference import attention_mask_ref

    shape = gpu_report.replace(shape, batch=2)
    gen = torch.Generator().manual_seed(3)
    q, _, _, km = gpu_report._attn_inputs(shape, torch.device("cpu"), torch.float32, gen)
    dense = attention_mask_ref(2, shape.lq, shape.lk, key_mask=km, frames=shape.frames)
    flex = gpu_report.peers.FlexPeer(batch=2, lq=shape.lq, lk=shape.lk, frames=shape.frames, key_mask=km,
                                     reference=dense, device=torch.device("cpu"), compile=False)
    dense = torch.ones(2, 1, shape.lq, shape.lk, dtype=torch.bool) if dense is None else dense.expand(
        2, 1, shape.lq, shape.lk)
    block, _ = flex.block_mask((128, 128))  # checked against the dense mask as it is built
    if block is not None:
        assert torch.equal(create_mask(block.mask_mod, 2, 1, shape.lq, shape.lk, device="cpu"), dense)
    pattern = attention_mask_ref(1, shape.lq, shape.lk, frames=shape.frames)
    visible = shape.lq * shape.lk if pattern is None else int(pattern.sum())
    assert shape.visible_pairs() == visible


BARE_MACHINE = """
import importlib.abc, sys
class _NoDataStack(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("nvidia", "av"):
            raise ImportError("not installed on the GPU image: " + name)
sys.meta_path.insert(0, _NoDataStack())
from benchmarks import gpu_report
rc = gpu_report.main(["--cpu-smoke", "--sections", "step", "--out", sys.argv[1]])
loaded = [m for m in ("scl_fast.data.loader", "scl_fast.data.video", "scl_fast.data.dali") if m in sys.modules]
assert not loaded, f"the report pulled in the data pipeline: {loaded}"
raise SystemExit(rc)
"""


def test_step_section_needs_no_data_stack(tmp_path: Path) -> None:
    """The GPU machine's image has neither DALI nor PyAV: the report (step section included) must not import them."""
    proc = subprocess.run([sys.executable, "-c", BARE_MACHINE, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert {r["impl"] for r in rows if r["section"] == "step" and r["status"] == "ok"} == {"eager", "fused/naive"}


def test_summary_gives_ratios_by_wall_time_and_by_graph_replay() -> None:
    """The summary's attention lines: ours over each peer (eager left out) by TFLOP/s, and where both were
    replayed from a CUDA graph, by that time too (a peer without one is left out of that part)."""
    def row(impl: str, tflops: float, graph: float | None) -> dict:
        return {"section": "attention", "case": "frames", "impl": impl, "pass_": "fwd+bwd", "status": "ok",
                "tflops": tflops, "graph_ms": graph}

    rows = [row("scl_triton", 30.0, 0.5), row("sdpa", 20.0, 1.2), row("flex", 10.0, None), row("eager", 1.0, 9.0)]
    (line,) = gpu_report.summary_lines(rows)
    assert line == ("- attention frames fwd+bwd: ours 30 tflops; 1.50x sdpa, 3.00x flex; "
                    "replayed from a CUDA graph: 2.40x sdpa")
