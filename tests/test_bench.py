"""`copsd speed rollout|workload|step` on the tiny CPU shape: they run, measure both paths, write JSON
with the columns each row must have, and where a number is the scheduler's alone (decode steps and
slot use of rows with fixed lengths) the exact one (`bench` is the same command group under its
earlier name; a test checks the alias)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

ROLLOUT_KEYS = {
    "shape", "engine", "batch", "new_tokens", "lora", "ms_per_step", "tokens_per_s", "decode_tokens_per_s",
    "peak_memory_gib", "bytes_per_step_gb", "achieved_gb_s", "bandwidth_share",
}  # fmt: skip
WORKLOAD_KEYS = {
    "mode", "problems", "sequences", "slots", "wall_s", "useful_tokens", "useful_tokens_per_s", "workload_s",
    "extrapolated", "peak_memory_gib",
}  # fmt: skip
ENGINE_KEYS = {"capture_s", "prefill_s", "decode_steps", "ms_per_step", "slot_utilization", "prefilled_prompts"}


def _continuous_steps(lengths: list[int], slots: int, check_every: int = 16) -> int:
    """Decode steps continuous batching takes for rows of these exact lengths: the host checks every
    `check_every` steps and at the step a live row must have ended (copsd.rollout.fast.scheduler),
    and refills every freed slot then."""
    queue, steps, deadline = 0, 0, {}
    free = list(range(slots))
    while True:
        for b in free:
            if queue < len(lengths):
                deadline[b] = steps + lengths[queue] - 1
                queue += 1
        if not deadline:
            return steps
        steps += 1
        if steps % check_every and steps < min(deadline.values()):
            free = []
            continue
        free = [b for b, d in deadline.items() if steps >= d]
        for b in free:
            del deadline[b]


@pytest.mark.slow
def test_bench_rollout_measures_fast_and_hf(workdir):
    r = run_cli(
        "speed",
        "rollout",
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--batch",
        "2,3",
        "--new-tokens",
        "12",
        "--hf-new-tokens",
        "6",
        "--prompt-len",
        "16",
        "--profile",
        "--out",
        "r.json",
        cwd=workdir,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads((workdir / "r.json").read_text())
    rows = out["rows"]
    assert [(x["engine"], x["batch"]) for x in rows] == [("fast", 2), ("hf", 2), ("fast", 3), ("hf", 3)]
    by = {(x["engine"], x["batch"]): x for x in rows}
    for x in rows:
        assert ROLLOUT_KEYS <= set(x) and x["new_tokens"] == (12 if x["engine"] == "fast" else 6)
        assert x["tokens_per_s"] > 0 and x["ms_per_step"] > 0 and x["bytes_per_step_gb"] > 0
        assert x["decode_tokens_per_s"] == pytest.approx(1e3 * x["batch"] / x["ms_per_step"])
    for b in (2, 3):  # the speed-up is the step-time ratio of the same run's rows; bytes are the shape's
        fast, hf = by[("fast", b)], by[("hf", b)]
        assert fast["speedup_vs_hf"] == pytest.approx(hf["ms_per_step"] / fast["ms_per_step"])
    assert by[("fast", 3)]["bytes_per_step_gb"] > by[("fast", 2)]["bytes_per_step_gb"]  # a larger batch's cache
    assert out["profile"]["eager_ms_per_step"] > 0
    assert "tok/s" in r.stdout and "x hf" in r.stdout


def test_bench_rollout_compares_step_levers_with_plain_fast(workdir):
    """`--engines fast,fast+fuse+search`: each lever set is a row, timed against plain fast in the
    same run (the GPU session measures them; the tokens are the same, tests/test_rollout_fast.py)."""
    r = run_cli(
        "speed", "rollout", "--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--batch", "2",
        "--new-tokens", "8", "--prompt-len", "16", "--top-k", "0", "--temperature", "1.0",
        "--engines", "fast,fast+fuse+search", "--out", "r.json", cwd=workdir,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads((workdir / "r.json").read_text())["rows"]
    assert [x["engine"] for x in rows] == ["fast", "fast+fuse+search"] and not any("error" in x for x in rows)
    for x in rows:  # every row measures the same things, at the asked batch and length
        assert ROLLOUT_KEYS <= set(x) and (x["shape"], x["batch"], x["new_tokens"], x["lora"]) == ("tiny", 2, 8, True)
        assert x["decode_tokens_per_s"] == pytest.approx(1e3 * x["batch"] / x["ms_per_step"])
        assert x["achieved_gb_s"] == pytest.approx(x["bytes_per_step_gb"] / (x["ms_per_step"] / 1e3))
        assert x["bandwidth_share"] is None  # no device bandwidth is measured on a CPU
    # the levers read the same weights and cache: the same bytes per step; the speed-up is the step-time ratio
    assert rows[0]["bytes_per_step_gb"] == pytest.approx(rows[1]["bytes_per_step_gb"])
    assert rows[1]["speedup_vs_fast"] == pytest.approx(rows[0]["ms_per_step"] / rows[1]["ms_per_step"])
    assert "speedup_vs_fast" not in rows[0] and "speedup_vs_hf" not in rows[0]  # no hf row asked for
    assert "x fast" in r.stdout and "tok/s" in r.stdout
    bad = run_cli("speed", "rollout", "--device", "cpu", "--engines", "fast+turbo", cwd=workdir)
    assert bad.returncode == 2 and "unknown engine(s) fast+turbo" in bad.stderr and "fast+fuse" in bad.stderr


@pytest.mark.slow
def test_bench_step_compares_lean_and_naive(workdir):
    r = run_cli(
        "speed",
        "step",
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--rollouts",
        "2",
        "--completion",
        "10",
        "--teacher-prompt",
        "24",
        "--student-prompt",
        "12",
        "--chunk",
        "4,64",
        "--reps",
        "1",
        "--out",
        "s.json",
        cwd=workdir,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads((workdir / "s.json").read_text())
    assert [x["path"] for x in out["rows"]] == ["lean (chunk 4)", "lean (chunk 64)", "naive"]
    losses = [x["loss"] for x in out["rows"]]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert out["rollout"]["fast_s"] > 0 and out["rollout"]["hf_ms_per_step"] > 0


def test_bench_bad_input_is_one_line(workdir):
    r = run_cli("bench", "rollout", "--shape", "tiny", "--device", "cpu", "--engines", "fast,vllm", cwd=workdir)
    assert r.returncode == 2 and "unknown engine(s) vllm" in r.stderr and "Traceback" not in r.stderr
    if not torch.cuda.is_available():
        r = run_cli("speed", "step", "--device", "cuda", cwd=workdir)
        assert r.returncode == 2 and "no CUDA device" in r.stderr
    for args, expect in [
        (["--shape", "qwen3-70b"], "unknown shape 'qwen3-70b'"),
        (["--dtype", "fp8"], "--dtype: unknown dtype 'fp8'"),
        (["--batch", "0"], "--batch takes comma-separated positive integers"),
        (["--new-tokens", "0"], "Invalid value for '--new-tokens'"),
    ]:
        r = run_cli("speed", "rollout", "--device", "cpu", *args, cwd=workdir)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


@pytest.mark.slow
def test_bench_step_per_method_measures_each_memory_setting(workdir):
    """`speed step --method`: one optimizer step through the trainer per setting, each in its own
    process on CPU (peak RSS); the token cap splits the forwards and leaves the loss unchanged."""
    r = run_cli(
        "speed",
        "step",
        "--method",
        "grpo",
        *("--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--generations", "4", "--prompts", "1"),
        *("--completion", "24", "--student-prompt", "8", "--micro-batch", "4", "--max-tokens", "0,64"),
        *("--checkpointing", "on", "--reps", "0", "--out", "g.json"),
        cwd=workdir,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads((workdir / "g.json").read_text())
    rows = out["rows"]
    assert [(x["max_tokens"], x["forwards_per_step"]) for x in rows] == [(None, 1), (64, 2)]
    assert all(x["peak_gib"] > x["base_gib"] > 0 and x["step_s"] > 0 for x in rows)
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-5)
    assert "ru_maxrss" in out["memory"]


def test_step_measure_runs_every_method_in_process():
    from copsd.speed.step_memory import StepSetting, measure

    for method in ("copsd", "sft"):
        s = StepSetting(
            method=method, shape="tiny", model=None, device="cpu", dtype="float32", prompts=2, generations=1,
            prompt_len=8, completion=12, teacher_prompt=16, micro_batch=2, max_tokens=20, checkpointing=True,
            chunk=8, reps=0,
        )  # fmt: skip
        r = measure(s)
        assert r["forwards_per_step"] == 2 and r["step_s"] > 0 and torch.isfinite(torch.tensor(r["loss"]))


def test_bench_step_method_bad_input_is_one_line(workdir):
    for args, expect in [
        (["--method", "dpo"], "'dpo' is not one of 'copsd', 'grpo', 'sft'"),
        (["--method", "sft", "--checkpointing", "maybe"], "--checkpointing takes on, off"),
        (["--reps", "0"], "--reps 0 is for --method only"),
    ]:
        r = run_cli("speed", "step", "--shape", "tiny", "--device", "cpu", *args, cwd=workdir)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_workload_every_mode_decodes_the_same_tokens(workdir):
    """`copsd speed workload` on the tiny shape: the drawn lengths are the real prompts' and the
    stated distribution's; fast, static and hf decode exactly the workload's useful tokens (hf on
    its subset); continuous batching keeps more slots busy than static waves (counted, not timed)."""
    out = workdir / "w.json"
    r = run_cli(
        "speed", "workload", "--shape", "tiny", "--device", "cpu", "--dtype", "float32",
        "--problems", "12", "--samples", "4", "--slots", "8", "--median", "30", "--max-new-tokens", "96",
        "--hf-problems", "3", "--modes", "fast,static,hf,fast+fuse+search", "--out", str(out), cwd=workdir,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    from copsd.speed.workload import make_workload, prompt_lengths

    w = make_workload(12, 4, 30, 0.9, 96, 4096, seed=0)
    assert [len(p) for p in w.prompts] == prompt_lengths()[:12]
    assert res["workload"]["useful_tokens"] == sum(w.lengths) and 0 < res["workload"]["truncated_share"] < 0.5
    assert [row["mode"] for row in res["rows"]] == ["fast", "static", "hf", "fast+fuse+search"]
    rows = {row["mode"]: row for row in res["rows"]}
    for mode, row in rows.items():
        keys = WORKLOAD_KEYS | (set() if mode == "hf" else ENGINE_KEYS)
        assert keys <= set(row) and "error" not in row, (mode, keys - set(row))
        assert row["workload_s"] == pytest.approx(sum(w.lengths) / row["useful_tokens_per_s"])
    assert rows["fast"]["useful_tokens"] == rows["static"]["useful_tokens"] == sum(w.lengths)
    # rows end at their drawn lengths, so the decode steps are the scheduler's alone: static waves of 8
    # wait for their longest row, continuous batching refills a slot at the check after its row ends
    static_steps = sum(max(w.lengths[i : i + 8]) - 1 for i in range(0, len(w.lengths), 8))
    cont_steps = _continuous_steps(w.lengths, slots=8)
    assert rows["static"]["decode_steps"] == static_steps and rows["fast"]["decode_steps"] == cont_steps
    assert rows["fast+fuse+search"]["decode_steps"] == cont_steps
    for mode, steps in [("fast", cont_steps), ("static", static_steps)]:  # useful tokens / slot steps
        assert rows[mode]["slot_utilization"] == pytest.approx(sum(w.lengths) / (steps * 8))
    assert (
        rows["fast+fuse+search"]["useful_tokens"] == sum(w.lengths) and rows["fast+fuse+search"]["speedup_vs_fast"] > 0
    )
    assert rows["hf"]["useful_tokens"] == sum(w.head(3).lengths) and rows["hf"]["extrapolated"]
    assert rows["fast"]["slot_utilization"] > rows["static"]["slot_utilization"]
    assert rows["fast"]["decode_steps"] < rows["static"]["decode_steps"]
    assert rows["fast"]["prefilled_prompts"] == 12 and rows["static"]["prefilled_prompts"] == 48
    assert "useful" in r.stdout and "static" in r.stdout
    bad = run_cli("speed", "workload", "--device", "cpu", "--shape", "tiny", "--modes", "fast,vllm", cwd=workdir)
    assert bad.returncode == 2 and "unknown mode(s) vllm" in bad.stderr and "Traceback" not in bad.stderr


def test_only_a_lever_row_may_fail_without_failing_the_run():
    from copsd.speed.shapes import failed_row

    try:
        raise RuntimeError("inductor: no C++ compiler\nsecond line")
    except RuntimeError as e:
        row = failed_row({"engine": "fast+flex"}, "fast+flex", e)
        assert row["error"] == "RuntimeError: inductor: no C++ compiler" and "Traceback" in row["traceback"]
        for plain in ("fast", "static", "hf"):
            with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
                failed_row({}, plain, e)
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert failed_row({}, "hf", oom)["error"] == "out of memory"
