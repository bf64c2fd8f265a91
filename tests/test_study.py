"""The grouping study's pieces: presets, the planted data source, the R_D warm-up, scoring class
groups against merged superclasses, the study table and its figure."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from splitnet.class_similarity import balanced_spectral_groups
from splitnet.config import ConfigError, experiment_names, load_registry, method_of, resolve, study_experiment
from splitnet.data import prepare_data, read_manifest
from splitnet.data.errors import DataError
from splitnet.figures import fig_class_groups
from splitnet.metrics import adjusted_rand_index, best_merge_ari, class_group_table, merges, semantic_ari
from splitnet.outputs import ScaleOutputs
from splitnet.regularizers import RegularizerConfig, warmed_up
from splitnet.study import COLUMNS, INIT_SNAPSHOT, goal_verdicts, study_cells, write_study

FASHION_SUPER = [0, 2, 0, 0, 0, 1, 0, 1, 2, 1]  # tops / footwear / other (splitnet.data.fashion_mnist)


def test_merges_are_the_set_partitions():
    # Stirling numbers of the second kind: S(3,2) = 3, S(4,2) = 7, S(5,3) = 25
    assert merges(3, 2) == [[0, 0, 1], [0, 1, 0], [0, 1, 1]]
    assert [len(merges(n, k)) for n, k in ((4, 2), (5, 3), (3, 3), (3, 1), (2, 3))] == [7, 25, 1, 1, 0]


def test_best_merge_ari_scores_a_two_group_split_against_the_right_merge():
    tops_vs_rest = [0 if s == 0 else 1 for s in FASHION_SUPER]
    assert best_merge_ari(tops_vs_rest, FASHION_SUPER, 2) == 1.0
    footwear_vs_rest = [1 if s == 1 else 0 for s in FASHION_SUPER]
    assert best_merge_ari(footwear_vs_rest, FASHION_SUPER, 2) == 1.0
    # against the three superclasses themselves neither can reach 1
    assert adjusted_rand_index(tops_vs_rest, FASHION_SUPER) < 0.75
    clothing_vs_accessories = [1 if s == 1 or c == 8 else 0 for c, s in enumerate(FASHION_SUPER)]
    assert 0.5 < best_merge_ari(clothing_vs_accessories, FASHION_SUPER, 2) < 0.7


def test_class_group_table_adds_the_merge_score_only_with_fewer_groups():
    names = [f"c{i}" for i in range(10)]
    two = torch.tensor([[s == 0 for s in FASHION_SUPER], [s != 0 for s in FASHION_SUPER]])
    table = class_group_table(two, names, FASHION_SUPER, ["tops", "footwear", "other"])
    assert table["best_merge_ari"] == 1.0 and semantic_ari(table) == 1.0
    three = torch.stack([torch.tensor([s == g for s in FASHION_SUPER]) for g in range(3)])
    table = class_group_table(three, names, FASHION_SUPER, None)
    assert "best_merge_ari" not in table and semantic_ari(table) == table["superclass_ari"] == 1.0


def test_presets_apply_last_and_keep_the_row_identity(tmp_path):
    registry = load_registry("params")
    plain, semantic = resolve(registry, "shallow", "cpu", 1), resolve(registry, "shallow@semantic", "cpu", 1)
    for key, value in registry["presets"]["semantic"]["group"].items():
        assert semantic["group"][key] == value  # wins over the scale's overrides
    assert (
        semantic["group"]["split"] == plain["group"]["split"] and method_of(registry, "shallow@semantic") == "splitnet"
    )
    assert semantic["experiment"] == "shallow@semantic" and semantic["engine"]["seed"] == 1
    assert "shallow@semantic" in experiment_names(registry) and study_experiment("fc", "paper") == "fc"
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        resolve(registry, "shallow@nope", "cpu")
    # a preset may not change what a row is
    params = tmp_path / "params"
    params.mkdir()
    for name in ("experiments.yaml", "scales.yaml"):
        (params / name).write_text(Path("params", name).read_text())
    doc = yaml.safe_load((params / "experiments.yaml").read_text())
    doc["presets"]["bad"] = {"group": {"split": "1-1-4"}}
    (params / "experiments.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"presets\.bad\.group\.split: a preset cannot change a row's identity"):
        load_registry(params)
    doc["presets"].pop("bad")
    doc["grouping_study"]["presets"].append("missing_preset")
    (params / "experiments.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="grouping_study.presets: unknown preset 'missing_preset'"):
        load_registry(params)


def test_disjoint_warmup_ramps_gamma_disjoint_only():
    config = RegularizerConfig(gamma_disjoint=2.0, gamma_weight=1.0, gamma_balance=3.0, weighted=True)
    assert warmed_up(config, 0, 100).gamma_disjoint == 0.0
    assert warmed_up(config, 25, 100) == RegularizerConfig(0.5, 1.0, 3.0, True)
    assert warmed_up(config, 100, 100) is config and warmed_up(config, 7, 0) is config


def test_planted_source_writes_cifar_files_and_reads_them_back(tmp_path):
    planted = {"superclasses": 3, "classes_per_superclass": 2, "train_per_class": 12, "test_per_class": 4, "seed": 1}
    cfg = {"source": "planted", "root": str(tmp_path / "raw"), "planted": planted, "val_size": 6, "resize": 8}
    manifest = prepare_data(cfg, tmp_path / "prepared")
    assert (tmp_path / "raw" / "cifar-100-python" / "train").is_file()  # the official layout, via the real loader
    assert manifest == read_manifest(tmp_path / "prepared")
    assert len(manifest["class_names"]) == 6 and sorted(set(manifest["superclass"])) == [0, 1, 2]
    assert manifest["splits"]["train"]["count"] == 66 and manifest["image_shape"] == [3, 8, 8]
    with pytest.raises(DataError, match="data.planted"):
        prepare_data({"source": "planted", "root": str(tmp_path / "raw")}, tmp_path / "x")
    with pytest.raises(DataError, match="data.planted"):
        prepare_data({"source": "fashion_mnist", "planted": planted}, tmp_path / "x")
    for knob, bad in (("pixel_noise", "loud"), ("class_offset", 0), ("pixel_noise", -0.1)):
        with pytest.raises(DataError, match=f"data.planted.{knob} must be"):
            prepare_data({**cfg, "planted": {**planted, knob: bad}}, tmp_path / "x")
    with pytest.raises(DataError, match="optionally class_offset, pixel_noise"):
        prepare_data({**cfg, "planted": {**planted, "blur": 1}}, tmp_path / "x")
    hard = prepare_data(
        {**cfg, "root": str(tmp_path / "hard"), "planted": {**planted, "class_offset": 0.5}}, tmp_path / "h"
    )
    assert hard["settings"]["planted"]["class_offset"] == 0.5


def _groups(assignment: list[int], supers: list[int], names: list[str]) -> dict:
    membership = torch.tensor([[a == g for a in assignment] for g in range(max(assignment) + 1)])
    return class_group_table(membership, names, supers, [f"s{i}" for i in range(max(supers) + 1)])


def test_study_table_scores_every_dataset_and_preset(tmp_path):
    registry = load_registry("params")
    cells = study_cells(registry)
    datasets = registry["grouping_study"]["datasets"]
    assert {c.dataset for c in cells} == {name for name, entry in datasets.items() if not entry.get("extended")}
    assert ("planted", "semantic") in {(c.dataset, c.preset) for c in cells}
    extended = study_cells(registry, extended=True)  # run and tabled apart: --config extended_study=True
    assert {c.dataset for c in extended} == {"planted_hard"} and not {c.dataset for c in cells} & {"planted_hard"}
    assert {"equal_budget", "paper_dynamics", "paper", "semantic"} <= {c.preset for c in extended}
    names = [f"k{9 - i}" for i in range(10)]  # label order is not name order, as in real datasets
    perfect, noise = [0 if s == 0 else 1 for s in FASHION_SUPER], [0, 1] * 5
    for cell in cells:
        if cell.dataset != "fashion_g2":
            continue
        for seed in cell.seeds:
            grouping = perfect if cell.preset == "semantic" else noise
            metrics = {
                "test_error": 10.0 + seed,
                "groups": _groups(grouping, FASHION_SUPER, names),
                "grouping": {"assignment_converged": 1.0, "steps_to_convergence": {"all": 100 * (seed + 1)}},
            }
            path = ScaleOutputs(tmp_path, cell.scale).run_dir(cell.experiment, seed, "evaluate") / "metrics.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(metrics, sort_keys=True))  # as the stages write it: keys by name
    # the semantic cell's seed 0 started from the superclasses already (its step-0 snapshot), the
    # paper cell's from the noise grouping; the manifest gives the steps per epoch
    for preset, start in (("semantic", perfect), ("paper", noise)):
        cell = next(c for c in cells if (c.dataset, c.preset) == ("fashion_g2", preset))
        snapshot = ScaleOutputs(tmp_path, cell.scale).run_dir(cell.experiment, 0, "learn_groups") / INIT_SNAPSHOT
        snapshot.parent.mkdir(parents=True)
        torch.save({"head_out": torch.nn.functional.one_hot(torch.tensor(start), 2).T.float()}, snapshot)
    manifest = ScaleOutputs(tmp_path, "cpu").data / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"splits": {"train": {"count": 30_000}}, "class_names": names}))
    rows = write_study(registry, tmp_path, tmp_path / "tables")
    table = list(csv.DictReader(open(tmp_path / "tables" / "grouping_study.csv")))
    by = {(r["dataset"], r["preset"]): r for r in table}
    assert float(by[("fashion_g2", "semantic")]["init_ari_mean"]) == 1.0
    assert float(by[("fashion_g2", "paper")]["init_ari_mean"]) < 0.5
    # 333 steps per epoch: the paper cell's grouping + finetune (8 + 4), the semantic cell's also the baseline's 12
    assert by[("fashion_g2", "paper")]["sgd_steps"] == str(333 * 12)
    assert by[("fashion_g2", "semantic")]["sgd_steps"] == str(333 * 24)
    assert tuple(table[0]) == COLUMNS and len(table) == len(cells)
    by = {(r["dataset"], r["preset"]): r for r in table}
    seeds = len(registry["grouping_study"]["seeds"])
    semantic = by[("fashion_g2", "semantic")]
    assert semantic["seeds"] == semantic["converged_seeds"] == str(seeds)
    assert float(semantic["ari_mean"]) == 1.0 and float(semantic["ari_std"]) == 0.0
    assert float(semantic["test_error_mean"]) == 10.0 + (seeds - 1) / 2
    assert float(by[("fashion_g2", "paper")]["ari_mean"]) < 0.5 and by[("planted", "paper")]["seeds"] == "0"
    assert "planted" in by[("planted", "paper")]["dataset"] and "fashion" in semantic["dataset"]
    verdicts = goal_verdicts(rows)
    assert any(v.startswith("fashion_g2: goal met") for v in verdicts)
    assert any(v.startswith("planted: no finished") for v in verdicts)
    assert "| fashion_g2 | semantic | 1.000 ± 0.000 |" in (tmp_path / "tables" / "grouping_study.md").read_text()
    # the goal also asks for a test error no worse than the paper-faithful row's (by one pooled std)
    worse = [
        {**r, "test_error_mean": r["test_error_mean"] + 5.0}
        if (r["dataset"], r["preset"]) == ("fashion_g2", "semantic")
        else r
        for r in rows
    ]
    assert any(v.startswith("fashion_g2: goal NOT met") and "beyond one pooled std" in v for v in goal_verdicts(worse))


def test_class_group_figure_is_written(tmp_path):
    names = [f"k{i}" for i in range(10)]
    tables = [
        {**_groups(g, FASHION_SUPER, names), "seed": s}
        for s, g in enumerate(([0 if s == 0 else 1 for s in FASHION_SUPER], [0, 1] * 5))
    ]
    paths = fig_class_groups({"fashion\npaper": tables, "fashion\nsemantic": tables[:1]}, tmp_path / "fig")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)


def _block_confusion(blocks: list[list[int]], classes: int, within: float = 0.05) -> torch.Tensor:
    confusion = torch.full((classes, classes), 0.001) + torch.eye(classes)
    for block in blocks:
        for i in block:
            for j in block:
                confusion[i, j] += within
    return confusion


def test_balanced_spectral_groups_recover_confusion_blocks():
    # Fashion-like: tops (5) / footwear (3) / other (2); G = 2 puts the unconfused "other" with footwear (5/5)
    confusion = _block_confusion([[0, 2, 3, 4, 6], [5, 7, 9], [1, 8]], 10)
    assert adjusted_rand_index(balanced_spectral_groups(confusion, 2), [0, 1, 0, 0, 0, 1, 0, 1, 1, 1]) == 1.0
    # four blocks of five (the planted layout), classes shuffled
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0)).tolist()
    truth = [order.index(c) // 5 for c in range(20)]
    confusion = _block_confusion([[c for c in range(20) if truth[c] == b] for b in range(4)], 20, within=0.01)
    groups = balanced_spectral_groups(confusion, 4)
    assert adjusted_rand_index(groups, truth) == 1.0 and sorted(groups.count(g) for g in range(4)) == [5] * 4
    with pytest.raises(ValueError, match="cannot put 3 classes into 4 groups"):
        balanced_spectral_groups(torch.eye(3), 4)


@pytest.mark.parametrize("parametrisation", ["softmax", "simplex"])
def test_favour_starts_each_class_leaning_to_its_group(parametrisation):
    from splitnet.assignment import GroupAssignments
    from splitnet.model import wrn_plan
    from splitnet.spec import SplitSpec
    from splitnet.topology import build_topology

    topology = build_topology(wrn_plan(10, 1, 1, 10), SplitSpec.parse("1-1-2"))
    assignments = GroupAssignments(topology, parametrisation, generator=torch.Generator().manual_seed(0))
    groups = [0, 1] * 5
    assignments.favour("head_out", groups, 1.0)
    matrix = assignments.matrix("head_out")
    assert torch.allclose(matrix.sum(0), torch.ones(10))
    favoured = matrix[groups, range(10)]
    assert torch.allclose(favoured, torch.full((10,), torch.e / (torch.e + 1)), atol=0.01)  # +1 logit of 2 groups


PLANTED_TEST_SEEDS = (0, 1, 2)


@pytest.mark.slow
def test_semantic_preset_on_the_planted_hierarchy(tmp_path):
    """The `semantic` preset through the stage commands, on a small planted hierarchy (the
    `planted` scale's network, overrides and normalisation; 20 classes in 4 superclasses, 1,200
    grouping steps), three seeds: every grouping converges and the class groups match the
    superclasses far better than chance. A random balanced grouping of these 20 classes has ARI
    0.00 ± 0.08 (p99.9 0.34); a mean of three such ARIs reaches 0.3 with probability < 5e-5. The
    issue's goal (mean ARI >= 0.9) is not met (measured here: 0.42, 0.29, 0.61);
    docs/studies/semantic-groups.md has the full study and why."""
    from splitnet.cli import main

    registry_scales = yaml.safe_load(Path("params/scales.yaml").read_text())["scales"]
    params = tmp_path / "params"
    params.mkdir()
    (params / "experiments.yaml").write_text(Path("params/experiments.yaml").read_text())
    scale = json.loads(json.dumps(registry_scales["planted"]))
    scale["data"].update(root=str(tmp_path / "raw"), val_size=100, resize=12)
    scale["data"]["planted"].update(train_per_class=60, test_per_class=20)
    scale["epochs"] = {"train": 30, "group": 100, "finetune": 1, "ssl": 1}  # 12 steps per epoch
    scale["seeds"] = list(PLANTED_TEST_SEEDS)
    (params / "scales.yaml").write_text(yaml.safe_dump({"scales": {**registry_scales, "planted_small": scale}}))

    def cli(*args) -> None:
        assert main([str(a) for a in (*args, "--scale", "planted_small", "--params-dir", params)]) == 0, args

    data, aris = tmp_path / "data", []
    cli("prepare-data", "--experiment", "baseline", "--out", data)
    for seed in PLANTED_TEST_SEEDS:
        out = tmp_path / f"seed_{seed}"
        common = ("--seed", seed, "--data", data)
        cli("train", "--experiment", "baseline", *common, "--out", out / "train")
        cli(
            "learn-groups",
            "--experiment",
            "fc@semantic",
            *common,
            "--baseline",
            out / "train" / "model.pt",
            "--out",
            out / "learn_groups",
        )
        cli(
            "split",
            "--experiment",
            "fc@semantic",
            "--seed",
            seed,
            "--source",
            out / "learn_groups" / "model.pt",
            "--out",
            out / "split",
        )
        cli(
            "evaluate",
            "--experiment",
            "fc@semantic",
            *common,
            "--source",
            out / "split" / "model.pt",
            "--out",
            out / "evaluate",
        )
        metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
        assert metrics["grouping"]["assignment_converged"] >= 0.9, f"seed {seed} did not converge"
        aris.append(semantic_ari(metrics["groups"]))
    print(f"planted ARI per seed {PLANTED_TEST_SEEDS}: {aris}")
    assert sum(aris) / len(aris) >= 0.3, f"ARI per seed {aris}"
