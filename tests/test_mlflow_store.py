"""The MLflow store as users meet it: rows' key params on parent runs, an import that survives
``kill -9`` at any moment (database creation included), and the runs seen through a real
``mlflow server``'s REST API. Records are written the way stages write them, from the repo's
params at the ``ci`` scale."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from splitnet.config import METHOD_STAGES, load_registry, resolve, stage_config
from splitnet.io import atomic_write_json
from splitnet.mlflow_import import TrackEntry, import_runs
from splitnet.records import RUN_RECORD, RunRecorder, load_record, read_record
from splitnet.run_summaries import row_params

REPO = Path(__file__).resolve().parents[1]
REGISTRY = load_registry(REPO / "params")
SCALE = "ci"
EPOCHS = 20


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No telemetry, no inherited store, and any stray default ./mlflow.db lands in tmp."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


def final_metrics(experiment: str) -> dict[str, float]:
    """Distinct per row, so sorting the runs table by them is checkable."""
    offset = sorted(REGISTRY["experiments"]).index(experiment)
    return {
        "test_error": 30.0 + offset,
        "test_loss": 1.0 + offset / 10,
        "params": 5e4 - offset,
        "flops": 5e6 - offset,
        "params_reduced_pct": 20.0 + offset,
        "flops_reduced_pct": 9.0 + offset,
        "images_per_s": 4000.0,
    }


def write_row(runs: Path, experiment: str) -> list[Path]:
    """The run records of one table row, as its stages write them (config sections of the
    stage, per-epoch history of the training stages, evaluate's metrics.json)."""
    cfg = resolve(REGISTRY, experiment, SCALE)
    paths = []
    for stage in METHOD_STAGES[cfg["method"]]:
        out = runs / experiment / stage
        with RunRecorder(out, experiment, stage, SCALE, stage_config(cfg, stage)) as rec:
            if stage == "evaluate":
                metrics = final_metrics(experiment)
                atomic_write_json(
                    out / "metrics.json", {"dataset": cfg["data"]["source"], "arch": cfg["model"]["arch"], **metrics}
                )
                rec.finish(metrics, [out / "metrics.json"])
            else:
                for epoch in range(1, EPOCHS + 1):
                    rec.log(epoch, {"train_loss": 2.0 / epoch, "val_error": 60.0 - epoch})
                (out / "model.pt").write_bytes(bytes(4096))
                rec.finish({"train_loss": 2.0 / EPOCHS}, [out / "model.pt"])
        paths.append(out / RUN_RECORD)
    return paths


def rows_of(runs: Path, experiments: list[str]) -> dict[str, list[Path]]:
    return {experiment: write_row(runs, experiment) for experiment in experiments}


# --------------------------------------------------------------------------- parent params

COMMON = {"scale": SCALE, "arch": "wrn-10-1", "seed": "0", "dataset": "fashion_mnist"}
GROUPING = {
    "method": "splitnet",
    "parametrisation": "softmax",
    "gamma_disjoint": "1.0",
    "gamma_weight": "1.0",
    "gamma_balance": "10.0",
    "dropout": "0.0",
    "assignment_lr_scale": "1.0",
}
EXPECTED_PARAMS = {
    "baseline": COMMON | {"method": "baseline", "dropout": "0.0"},
    "shallow": COMMON | GROUPING | {"split": "1-2-2", "G": "2"},
    "fc": COMMON | GROUPING | {"split": "1-1-4", "G": "4"},
    "hier": COMMON | GROUPING | {"split": "2-4-4", "G": "2-4", "dropout": "0.5"},
    "fc_overlap": COMMON | GROUPING | {"split": "1-1-4", "G": "4", "overlap_threshold": "0.1"},
    "shallow_simplex": COMMON
    | GROUPING
    | {"split": "1-2-2", "G": "2", "parametrisation": "simplex", "simplex_rule": "official"},
    "shallow_random": COMMON | {"method": "random", "dropout": "0.0", "split": "1-2-2", "G": "2"},
    "ssl_3e-3": COMMON | {"method": "ssl", "dropout": "0.0", "ssl_strength": "0.003", "ssl_strength_scale": "1.0"},
}


def test_row_params_name_what_distinguishes_each_row(tmp_path: Path) -> None:
    """Only settings that act on the row: no gammas for the baseline, no simplex rule for a
    softmax grouping, the SSL strength only for SSL rows."""
    for experiment, records in rows_of(tmp_path / "runs", list(EXPECTED_PARAMS)).items():
        loaded = [(path, read_record(path)) for path in records]
        assert row_params(loaded) == EXPECTED_PARAMS[experiment], experiment
        # A row still running has no evaluate output yet: its dataset is not guessed.
        assert "dataset" not in row_params(loaded[:-1])


# --------------------------------------------------------------------------- kill -9

DRIVER = """
import json, sys
from pathlib import Path
from splitnet.mlflow_import import TrackEntry, import_runs
uri, spec = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
entries = [TrackEntry(e["table"], e["row"], [Path(p) for p in e["paths"]], e["title"]) for e in spec]
print("importing", flush=True)  # mlflow is loaded: kill times count from here
print(json.dumps(import_runs(uri, entries)), flush=True)
"""
KILL_TABLES = {"table1": ["baseline", "shallow"], "table2": ["baseline"]}


def start_import(uri: str, spec_file: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, uri, str(spec_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "importing\n", proc.stderr.read()
    return proc


def wait_for(condition, proc: subprocess.Popen[str]) -> bool:
    """Poll ``condition`` until it holds (True) or ``proc`` has exited (False)."""
    while proc.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
def test_import_survives_kill_9_at_any_moment(tmp_path: Path) -> None:
    """SIGKILL the importer at seeded random moments: while it creates a fresh database, then
    while it fills an existing one; the next import completes the store: no run lost, none
    duplicated, every history whole, no temporary file left."""
    from mlflow import MlflowClient

    runs = tmp_path / "results" / SCALE / "runs"
    rows = rows_of(runs, ["baseline", "shallow"])
    assert sum(map(len, rows.values())) == 6
    spec = [
        {"table": table, "row": row, "paths": [str(p) for p in rows[row]], "title": f"splitnet/{SCALE}/{table}"}
        for table, table_rows in KILL_TABLES.items()
        for row in table_rows
    ]
    spec_file = tmp_path / "entries.json"
    spec_file.write_text(json.dumps(spec))
    store = tmp_path / "results"
    db = store / "mlflow.db"
    uri = f"sqlite:///{db}"
    rng = random.Random(20170806)
    kills = {"creating": 0, "existing": 0}

    def temporary() -> list[Path]:
        return list(store.glob(".mlflow.db.creating-*"))

    # 1. Fresh path: kill once the schema is being built (its temporary file exists).
    while kills["creating"] < 5:
        db.unlink(missing_ok=True)  # an import got through before its kill: fresh again
        proc = start_import(uri, spec_file)
        if wait_for(lambda: bool(temporary()), proc):
            time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()  # SIGKILL; a no-op if the import already finished
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), err
        assert not (temporary() and db.exists())  # the database appears whole or not at all
        kills["creating"] += proc.returncode == -signal.SIGKILL and not db.exists()

    # 2. The next import cleans up after those kills and completes.
    proc = start_import(uri, spec_file)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and db.exists() and not temporary(), err

    # 3. Existing store: kill 0.05-3 s after the import starts; when an import finishes first,
    # the stages "rerun" (new records), so the next import deletes and recreates runs.
    while kills["existing"] < 12:
        rows = rows_of(runs, list(rows))
        proc = start_import(uri, spec_file)
        time.sleep(rng.uniform(0.05, 3.0))
        proc.kill()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), err
        kills["existing"] += proc.returncode == -signal.SIGKILL

    final = start_import(uri, spec_file)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts["missing"] == 0 and sum(counts.values()) == 8  # 2 + 4 + 2 (entry, record) pairs

    assert sorted(p.name for p in store.iterdir()) == [SCALE, "mlartifacts", "mlflow.db", "mlflow.db.lock"]
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'").fetchall() == []
        # Runs the kills interrupted were ended before going to the bin: none shows as running.
        assert con.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'").fetchall() == []
    client = MlflowClient(uri)
    for table, table_rows in KILL_TABLES.items():
        experiment = client.get_experiment_by_name(f"splitnet/{SCALE}/{table}")
        found = client.search_runs([experiment.experiment_id], max_results=1000)
        parents = [r for r in found if r.data.tags["splitnet.kind"] == "row"]
        assert sorted(p.data.tags["splitnet.row"] for p in parents) == sorted(table_rows)
        children = [r for r in found if r.data.tags["splitnet.kind"] == "stage"]
        assert len(found) == len(parents) + len(children)
        for parent in parents:
            row = parent.data.tags["splitnet.row"]
            assert parent.info.status == "FINISHED"
            assert parent.data.params == EXPECTED_PARAMS[row]
            assert parent.data.metrics == final_metrics(row)
            kids = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
            assert sorted(c.data.tags["splitnet.stage"] for c in kids) == sorted(
                read_record(p)["stage"] for p in rows[row]
            )
            for child, path in zip(
                sorted(kids, key=lambda c: c.data.tags["splitnet.stage"]),
                sorted(rows[row], key=lambda p: p.parent.name),
            ):
                assert child.data.tags["splitnet.record_sha256"] == load_record(path)[1]
                assert child.info.status == "FINISHED"
                if child.data.tags["splitnet.stage"] != "evaluate":
                    history = client.get_metric_history(child.info.run_id, "train_loss")
                    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
                artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
                assert {"config.json", RUN_RECORD} < artifacts
    print(
        f"kills during database creation: {kills['creating']}, "
        f"during the import into an existing store: {kills['existing']}"
    )


# --------------------------------------------------------------------------- mlflow server

SERVER_ROWS = ["baseline", "shallow", "hier", "ssl_3e-3"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rest(base: str, path: str, body: dict | None = None) -> dict:
    """GET (no body) or POST JSON to the MLflow REST API."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for_health(base: str, server: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"mlflow server at {base} not healthy after {timeout} s")


def as_dict(items: list[dict] | None) -> dict:
    return {item["key"]: item["value"] for item in items or []}


def test_runs_page_through_a_real_mlflow_server(tmp_path: Path) -> None:
    """What the runs table shows: parents with the row's params and final metrics, sortable
    without opening children; children nested under them."""
    rows = rows_of(tmp_path / "results" / SCALE / "runs", SERVER_ROWS)
    entries = [TrackEntry("table1", row, rows[row], f"splitnet/{SCALE}/table1") for row in SERVER_ROWS]
    db = tmp_path / "results" / "mlflow.db"
    import_runs(f"sqlite:///{db}", entries)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{db}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_health(base, server)
        name = urllib.parse.quote(f"splitnet/{SCALE}/table1")
        experiment_id = rest(base, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}")["experiment"][
            "experiment_id"
        ]
        found = rest(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 1000})[
            "runs"
        ]
        parents = {}
        for run in found:
            tags = as_dict(run["data"].get("tags"))
            if tags["splitnet.kind"] == "row":
                parents[tags["splitnet.row"]] = run
        assert sorted(parents) == sorted(SERVER_ROWS)
        for row, run in parents.items():
            assert as_dict(run["data"].get("params")) == EXPECTED_PARAMS[row]
            assert as_dict(run["data"].get("metrics")) == final_metrics(row)
        children = [run for run in found if as_dict(run["data"]["tags"])["splitnet.kind"] == "stage"]
        assert len(children) == sum(map(len, rows.values()))
        for child in children:
            tags = as_dict(child["data"]["tags"])
            parent = parents[tags["splitnet.row"]]
            assert tags["mlflow.parentRunId"] == parent["info"]["run_id"]

        # Comparing rows needs no child: filter and sort parents on their own params/metrics.
        ranked = rest(
            base,
            "/api/2.0/mlflow/runs/search",
            {
                "experiment_ids": [experiment_id],
                "filter": "tags.`splitnet.kind` = 'row' and params.method = 'splitnet'",
                "order_by": ["metrics.test_error ASC"],
            },
        )["runs"]
        order = [as_dict(run["data"]["tags"])["splitnet.row"] for run in ranked]
        assert order == sorted(["shallow", "hier"], key=lambda row: final_metrics(row)["test_error"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
