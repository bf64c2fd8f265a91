"""Branch-parallel split networks on real gloo process groups (``splitnet.parallel``).

Workers are real processes (``launch``: spawn + gloo on 127.0.0.1), one spawn per worker count
for all equivalence checks, because starting a worker (importing torch) costs seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from conftest import randomize_batchnorm
from engine_helpers import engine_config, schedule

from splitnet import artifacts
from splitnet.assignment import GroupAssignments
from splitnet.augment import Normalizer
from splitnet.engine import CHECKPOINT, DeviceData, train
from splitnet.model import WideResNet, wrn_plan
from splitnet.parallel import (
    ParallelSplit,
    StreamSplit,
    Worker,
    WorkerError,
    WorkerFailure,
    branch_nodes,
    launch,
    own_flops,
    place,
)
from splitnet.parallel.finetune import _agree
from splitnet.partition import balanced_partition, partition_from_assignments, random_partition
from splitnet.spec import SplitSpec
from splitnet.split import build_split_network
from splitnet.stage_run import StageStart
from splitnet.topology import build_topology

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 8, 8)
CLASSES = 12
# (spec, partition) run branch-parallel, per worker count; "overlap" duplicates classes.
INFERENCE_CASES = {
    2: [("2-4-4", "random"), ("1-2-2", "overlap"), ("2-2-2", "balanced")],
    4: [("2-4-4", "random"), ("1-1-4", "balanced"), ("2-4-4", "overlap")],
}
FINETUNE_SPEC = "2-4-4"  # hierarchical: on 4 workers, each stage-2 branch is replicated on 2
ENGINE = engine_config(batch_size=8, eval_batch_size=16, augment_pad=2, checkpoint_every=100, log_every=100)
SCHEDULE = schedule(epochs=2, lr=0.1)


def _split(spec: str, kind: str, seed: int):
    """A WRN-10-1 split network with non-trivial BN statistics (and its plan, spec, partition)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    plan = wrn_plan(10, 1, SHAPE[0], CLASSES)
    dense = WideResNet(plan)
    randomize_batchnorm(dense, gen)
    top = build_topology(plan, SplitSpec.parse(spec))
    if kind == "overlap":  # sharp but unequal groups, fuzzy nodes copied into two branches
        groups = GroupAssignments(top, generator=gen)
        with torch.no_grad():
            for v in groups.values.values():
                v.copy_(torch.randn(v.shape, generator=gen) + torch.linspace(0, 1.0, v.shape[0])[:, None])
        part, _ = partition_from_assignments(top, groups.matrices(), overlap_threshold=0.2)
    else:
        part = balanced_partition(top) if kind == "balanced" else random_partition(top, seed)
    split = build_split_network(top, part, "shared", "preact", dense=dense)
    return split, plan, top.spec, part


def _save(path: Path, spec: str, kind: str, seed: int) -> Path:
    split, plan, parsed, part = _split(spec, kind, seed)
    artifacts.save_split(split, plan, parsed, part, "shared", "preact", path)
    return path


def _finetune(path: Path, data: DeviceData, run_dir: Path, worker: Worker | None) -> dict:
    """Finetune a saved split network with the engine, sequentially or branch-parallel."""
    model, _ = artifacts.load_model(path)
    net = ParallelSplit(model, SHAPE, worker) if worker is not None else model
    result = train(net, data, SCHEDULE, ENGINE, run_dir, normalizer=Normalizer("per_image"))
    if worker is not None:
        net.gather_branches()
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "losses": [row["train_loss"] for row in result.history],
    }


def _scenario(worker: Worker, files: dict, x: torch.Tensor, data: DeviceData, tmp: Path) -> dict:
    """Everything one worker computes for the equivalence tests."""
    torch.set_num_threads(1)
    out: dict = {"logits": [], "placement": None}
    for path in files["inference"]:
        model, _ = artifacts.load_model(path)
        net = ParallelSplit(model.eval(), SHAPE, worker).eval()
        with torch.no_grad():
            out["logits"].append(net(x))  # trunk data-parallel: 5 images shared by the workers
            out.setdefault("one_image", []).append(net(x[:1]))  # fewer images than workers: trunk replicated
        out["placement"] = [(r.start, r.stop) for r in net.placement.ranges]
    out["finetune"] = _finetune(files["finetune"], data, tmp / f"rank{worker.rank}", worker)
    out["agree"] = _agreements(worker, tmp / "agree")
    model, _ = artifacts.load_model(files["finetune"])
    if worker.rank == worker.world - 1:
        with torch.no_grad():
            model.trunk.stem.weight[0, 0, 0, 0] += 1e-3  # as if it had loaded another checkpoint
    try:
        ParallelSplit(model, SHAPE, worker)
        out["mismatch"] = None
    except WorkerFailure as err:
        out["mismatch"] = str(err)
    return out


def _agreements(worker: Worker, tmp: Path) -> dict[str, tuple[bool, bool]]:
    """(resume, restored) the workers agree on, from checkpoints at given (epoch, step) or none."""
    cases = {
        "same step": [(1, 3)] * worker.world,
        "different steps": [(1, 3)] + [(1, 2)] * (worker.world - 1),
        "one has none": [(1, 3)] * (worker.world - 1) + [None],
    }
    agreed = {}
    for case, positions in cases.items():
        own = tmp / case / f"rank{worker.rank}"
        own.mkdir(parents=True)
        position = positions[worker.rank]
        if position is not None:
            torch.save({"digest": "digest", "epoch": position[0], "step": position[1]}, own / CHECKPOINT)
        start = _agree(worker, own, StageStart("digest", resume=position is not None, restored=worker.is_main))
        agreed[case] = (start.resume, start.restored)
    return agreed


def _data(n: int = 48) -> DeviceData:
    gen = torch.Generator().manual_seed(1)
    return DeviceData(
        torch.randint(0, 256, (n, *SHAPE), generator=gen, dtype=torch.uint8),
        torch.randint(0, CLASSES, (n,), generator=gen),
    )


@pytest.fixture(scope="module", params=[2, 4], ids=["2 workers", "4 workers"])
def runs(request, tmp_path_factory):
    world = request.param
    tmp = tmp_path_factory.mktemp(f"parallel{world}")
    files = {
        "inference": [
            _save(tmp / f"infer{i}.pt", spec, kind, seed=i) for i, (spec, kind) in enumerate(INFERENCE_CASES[world])
        ],
        "finetune": _save(tmp / "finetune.pt", FINETUNE_SPEC, "random", seed=7),
    }
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(2))
    data = _data()
    start = time.perf_counter()
    workers = launch(_scenario, world, (files, x, data, tmp), timeout_s=240)
    seconds = time.perf_counter() - start
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: the same kernels, the same rounding
    try:
        with torch.no_grad():
            reference = [artifacts.load_model(p)[0].eval()(x) for p in files["inference"]]
        finetuned = _finetune(files["finetune"], data, tmp / "sequential", None)
    finally:
        torch.set_num_threads(threads)
    return {
        "world": world,
        "workers": workers,
        "reference": reference,
        "finetuned": finetuned,
        "seconds": seconds,
        "files": files,
    }


def test_inference_equals_the_sequential_split_network(runs):
    for case, (spec, kind) in enumerate(INFERENCE_CASES[runs["world"]]):
        ref = runs["reference"][case]
        for rank, worker in enumerate(runs["workers"]):
            out = worker["logits"][case]
            assert out.shape == (5, CLASSES)
            err = ((out - ref).abs().max() / ref.abs().max()).item()
            assert err < 1e-6, (spec, kind, rank, err)
            err = ((worker["one_image"][case] - ref[:1]).abs().max() / ref[:1].abs().max()).item()
            assert err < 1e-6, (spec, kind, rank, err)


def test_overlap_case_really_duplicates_classes(runs):
    (overlap,) = [
        p for p, (_, kind) in zip(runs["files"]["inference"], INFERENCE_CASES[runs["world"]]) if kind == "overlap"
    ]
    assert artifacts.load_model(overlap)[0].duplicated


def test_every_worker_gets_its_own_contiguous_leaves(runs):
    placement = runs["workers"][0]["placement"]  # of the last inference case
    assert len(placement) == runs["world"]
    assert placement[0][0] == 0 and all(a[1] == b[0] for a, b in pairwise(placement))
    assert all(start < stop for start, stop in placement)


def test_finetune_matches_the_single_process_run(runs):
    ref = runs["finetuned"]
    for rank, worker in enumerate(runs["workers"]):
        got = worker["finetune"]
        assert got["losses"] == pytest.approx(ref["losses"], rel=1e-5)
        for name, value in ref["state"].items():
            if value.is_floating_point():
                assert torch.allclose(got["state"][name], value, rtol=1e-4, atol=1e-6), (rank, name)
            else:
                assert torch.equal(got["state"][name], value), (rank, name)
    # the finetune really moved the weights (the comparison is not between two untouched copies)
    start = artifacts.load_model(runs["files"]["finetune"])[0].state_dict()
    assert not torch.allclose(start["roots.1.units.0.conv1.weight"], ref["state"]["roots.1.units.0.conv1.weight"])


def test_workers_resume_together_or_not_at_all(runs):
    for worker in runs["workers"]:  # worker 0's finished result is restored by all
        assert worker["agree"] == {
            "same step": (True, True),
            "different steps": (False, True),
            "one has none": (False, True),
        }


def test_workers_holding_different_weights_is_an_error(runs):
    for worker in runs["workers"]:
        assert "replicated layers differ" in worker["mismatch"]


# ----------------------------------------------------------------------------- placement


def test_placement_balances_flops_and_replicates_shared_parents():
    split = _split("2-4-4", "balanced", 0)[0]
    nodes = branch_nodes(split)
    costs = own_flops(split, nodes, SHAPE)
    assert sum(n.is_leaf for n in nodes) == 4
    two = place(nodes, costs, 2)
    assert two.ranges == (range(0, 2), range(2, 4))
    assert two.load(nodes, costs, 0) == two.load(nodes, costs, 1)
    four = place(nodes, costs, 4)
    stage2 = [n for n in nodes if n.depth == 0]
    assert [four.holders(n) for n in stage2] == [(0, 1), (2, 3)]
    with pytest.raises(ValueError, match="4 leaf branches"):
        place(nodes, costs, 5)


def test_placement_with_three_workers_covers_every_leaf_once():
    split = _split("1-4-4", "random", 3)[0]
    nodes = branch_nodes(split)
    ranges = place(nodes, own_flops(split, nodes, SHAPE), 3).ranges
    assert [i for r in ranges for i in r] == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- one GPU, streams


def test_streams_need_a_cuda_model():
    with pytest.raises(ValueError, match="CUDA model"):
        StreamSplit(_split("2-4-4", "random", 0)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("spec, kind", [("2-4-4", "random"), ("1-2-2", "overlap"), ("1-1-4", "balanced")])
def test_streams_equal_the_sequential_split_network(spec, kind):
    split = _split(spec, kind, 0)[0].eval().cuda()
    x = torch.randn(16, *SHAPE, device="cuda")
    net = StreamSplit(split)
    with torch.inference_mode():
        ref = split(x)
        for _ in range(3):  # the same streams, call after call
            assert torch.allclose(net(x), ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- failures


def _dies(worker: Worker, path: Path, x: torch.Tensor) -> torch.Tensor:
    model, _ = artifacts.load_model(path)
    net = ParallelSplit(model.eval(), SHAPE, worker).eval()
    if worker.rank == 1:
        os._exit(3)  # a crash: no exception, no report
    with torch.no_grad():
        return net(x)


def _hangs(worker: Worker, path: Path, x: torch.Tensor) -> torch.Tensor:
    model, _ = artifacts.load_model(path)
    net = ParallelSplit(model.eval(), SHAPE, worker).eval()
    if worker.rank == 1:
        time.sleep(600)
    with torch.no_grad():
        return net(x)


def _sleeps(worker: Worker) -> None:
    time.sleep(600)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("failures") / "m.pt", "1-2-2", "random", 0)


def test_a_dead_worker_is_reported_at_once(model_file):
    start = time.perf_counter()
    with pytest.raises(WorkerError, match="worker 1 died"):
        launch(_dies, 2, (model_file, torch.randn(2, *SHAPE)), timeout_s=120, collective_timeout_s=60)
    assert time.perf_counter() - start < 45  # not the 60 s collective timeout


def test_a_hung_worker_fails_the_others_after_the_collective_timeout(model_file):
    start = time.perf_counter()
    with pytest.raises(WorkerError) as err:
        launch(_hangs, 2, (model_file, torch.randn(2, *SHAPE)), timeout_s=120, collective_timeout_s=2)
    message = str(err.value)
    assert "worker 0 failed: WorkerFailure" in message and "gathering the trunk's output" in message
    assert "collective timeout 2 s" in message and "worker 1 was still running, stopped" in message
    assert time.perf_counter() - start < 45


def test_the_launcher_gives_up_on_workers_that_never_answer():
    start = time.perf_counter()
    with pytest.raises(WorkerError, match=r"workers \[0\] gave no result within 3 s: hung"):
        launch(_sleeps, 1, timeout_s=3)
    assert time.perf_counter() - start < 25


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_check_command(model_file):
    """The documented launch: torchrun, one process per worker, gloo on CPU."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "splitnet.parallel",
        "--timeout",
        "60",
        "check",
        "--model",
        str(model_file),
        "--image-size",
        "8",
        "--batch",
        "4",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1-2-2 on 2 workers (gloo" in proc.stdout and ": OK" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_two_workers_are_never_placed_on_one_gpu(model_file):
    """With one GPU visible, two torchrun workers would share it: refused in one line."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    cmd += ["splitnet.parallel", "--timeout", "60", "check", "--model", str(model_file), "--device", "cuda"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert proc.returncode != 0 and "two workers would share one" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- GPU check


# What the GPU machine's image holds (the device tool's notes, KINDS.md, read 2026-11-17): its
# python3 has these distributions and nothing else; jsonschema and its dependencies are absent.
DEVICE_IMAGE = set(
    """attrs certifi charset-normalizer contourpy cycler filelock fonttools fsspec idna jinja2 kiwisolver
    markupsafe matplotlib mpmath networkx numpy packaging pandas pillow pip psutil pyparsing python-dateutil
    pytz pyyaml requests rich scipy setuptools six sympy torch torchvision tqdm triton typing-extensions
    tzdata urllib3 markdown-it-py mdurl pygments""".split()
)


def _device_like_python(root: Path) -> Path:
    """A Python with only the device image's distributions: a bare venv whose .pth file points at
    links to those distributions of this one."""
    from importlib import metadata

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    site = root / "site"
    site.mkdir()
    for dist in metadata.distributions():
        if dist.metadata["Name"].lower().replace("_", "-") not in DEVICE_IMAGE:
            continue
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    (site / "nvidia").mkdir(exist_ok=True)  # CUDA wheels, if any, are found beside torch
    pth = next((root / "venv" / "lib").glob("python3*/site-packages"))
    (pth / "device_image.pth").write_text(f"{site}\n")
    return root / "venv" / "bin" / "python"


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_in_the_device_image_with_the_carried_wheels(tmp_path):
    """benchmarks/gpu_check.sh --cpu-tiny under a Python that, like the GPU machine's, lacks
    jsonschema: refused in one line without the wheels; with the wheels that
    fetch_device_wheels.sh downloads (for this Python's version), every step runs, and the check
    writes exactly its two files."""
    python = _device_like_python(tmp_path / "image")
    probe = subprocess.run([str(python), "-c", "import torch, yaml, scipy; import jsonschema"], capture_output=True)
    assert b"No module named 'jsonschema'" in probe.stderr  # the image: torch yes, jsonschema no
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PYTHON": str(python), "DEVICE_WHEELS": str(tmp_path / "wheels"), "GPU_CHECK_BUDGET": "400"}
    out = tmp_path / "gpu check"  # a space, on purpose
    run = lambda: subprocess.run(  # noqa: E731
        ["bash", "benchmarks/gpu_check.sh", "--cpu-tiny", str(out)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    refused = run()
    assert refused.returncode == 2 and "jsonschema is missing" in refused.stderr
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    fetched = subprocess.run(
        ["bash", "benchmarks/fetch_device_wheels.sh", version, str(tmp_path / "wheels")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    proc = run()
    summary = json.loads((out / "gpu_check.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == ["step_costs", "split_inference", "parallel_inference", "paper_pipeline"]
    assert proc.returncode == 0 and summary["ok"], (proc.stdout, (out / "gpu_check.log").read_text()[-3000:])
    costs = steps["step_costs"]["result"]
    assert {r["kind"] for r in costs["results"]} == {"baseline", "deep_grouping", "hier_finetune"}
    assert all(0 < r["fraction_of_peak"] < 1 and r["ms_per_step"] > 0 for r in costs["results"])
    assert set(summary["ms_per_step"]) == {"plain", "grouping", "finetune"}
    inference = steps["parallel_inference"]["result"]
    assert all(r["branch_speedup_over_workers"] > 0 and r["flop_ratio"] > 1 for r in inference["results"])
    pipeline = steps["paper_pipeline"]["result"]
    assert pipeline["ok"] and pipeline["parallel_vs_sequential_max_relative_weight_difference"] < 1e-4
    assert pipeline["evaluate_finetune_parallel"]["test_error"] == pytest.approx(
        pipeline["evaluate_finetune"]["test_error"]
    )
    assert steps["split_inference"]["result"]["results"]
