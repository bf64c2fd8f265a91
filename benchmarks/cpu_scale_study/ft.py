"""python ft.py ARCH SIDE SPLIT METHOD GSTEPS FSTEPS SEED : grouping (const lr) -> split -> finetune (milestones .42/.58)."""
import sys, time, json, torch
from common import *
arch, side, split, method, gsteps, fsteps, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
deep = split.startswith("2-"); dp, wd = (0.5, 1e-4) if deep else (0.0, 5e-4)
data = load(side); load0 = load_info()
if method.startswith("softmax"):
    net, topo, assign, tr, regf = make_grouping(arch, split, "softmax", dropout=dp, wd=wd, assign_lr=float(method.split("@")[1]), seed=seed, train=data["train"])
else:
    net, topo, assign, tr, regf = make_grouping(arch, split, "simplex", rule="official", dropout=dp, wd=wd, seed=seed, train=data["train"])
t0 = time.perf_counter()
while tr.steps < gsteps: tr.step(regf)
gms = 1000 * (time.perf_counter() - t0) / gsteps
st = conv_stats(assign)
mats = {n: assign.matrix(n).detach() for n in assign.names}
part, rep = partition_from_assignments(topo, mats)
sn = build_split_network(topo, part, "shared", "preact", dense=net)
pct = 100 * (1 - count_model(sn, (1, side, side)).params / count_model(dense(arch), (1, side, side)).params)
err0 = evaluate(sn, data["test"])
tr2 = Trainer(sn, data["train"], 90, 5e-4, 0.1, seed=seed + 100)
ms = [round(f * fsteps) for f in (100 / 240, 140 / 240)]
t0 = time.perf_counter()
while tr2.steps < fsteps:
    tr2.set_lr_factor(0.1 ** sum(tr2.steps >= m for m in ms)); tr2.step()
fms = 1000 * (time.perf_counter() - t0) / fsteps
out = {"arch": arch, "side": side, "split": split, "method": method, "gsteps": gsteps, "fsteps": fsteps, "seed": seed,
       "conv": {n: round(s["conv"], 2) for n, s in st.items()}, "repairs": rep, "params_reduced_pct": round(pct, 1),
       "classes": part["head_out"].int().argmax(0).tolist(), "err_after_split": round(err0, 2),
       "test_error": round(evaluate(sn, data["test"]), 2), "group_ms": round(gms, 1), "ft_ms": round(fms, 1),
       "load_start": load0, "load_end": load_info()}
open("/tmp/cpu-study/out/ft.jsonl", "a").write(json.dumps(out) + "\n"); print(json.dumps(out), flush=True)
