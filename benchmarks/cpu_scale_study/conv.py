"""python conv.py ARCH SIDE SPLIT METHOD MAXSTEPS [seed]; METHOD = softmax@<assign_lr> | simplex-official | simplex-paper"""
import sys, time, json, torch
from common import *
arch, side, split, method, maxsteps = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
seed = int(sys.argv[6]) if len(sys.argv) > 6 else 0
deep = split.startswith("2-")
dp, wd = (0.5, 1e-4) if deep else (0.0, 5e-4)
data = load(side)
warm = 0
if "w" in method.split("@")[-1]:
    method_lr, warm = method.split("@")[1].split("w"); warm = int(warm)
if method.startswith("softmax"):
    alr = float(method.split("@")[1].split("w")[0])
    net, topo, assign, tr, regf = make_grouping(arch, split, "softmax", dropout=dp, wd=wd, assign_lr=alr, seed=seed, train=data["train"])
else:
    net, topo, assign, tr, regf = make_grouping(arch, split, "simplex", rule=method.split("-")[1], dropout=dp, wd=wd, seed=seed, train=data["train"])
t0 = time.perf_counter(); curve = []; first = {}; freeze = {}; prev = None; conv_all = None; relaxed = None
EVERY = 50
load0 = load_info()
def assign_groups():
    return tr.extra[0].param_groups if tr.extra else [tr.opt.param_groups[-1]]
while tr.steps < maxsteps:
    if warm:
        for g in assign_groups(): g["lr"] = 0.0 if tr.steps < warm else g["base_lr"]
    tr.step(regf)
    if tr.steps % EVERY == 0:
        st = conv_stats(assign)
        am = {n: assign.matrix(n).detach().argmax(0) for n in assign.names}
        flips = {n: float((am[n] != prev[n]).float().mean()) if prev else 1.0 for n in am}; prev = am
        for n, s in st.items():
            if s["conv"] >= 0.9 and n not in first: first[n] = tr.steps
            if s["fuzzy"] < 0.2 and n not in freeze: freeze[n] = tr.steps
        curve.append({"step": tr.steps, **{n: [round(s["conv"], 3), round(s["fuzzy"], 3), round(flips[n], 3)] for n, s in st.items()}})
        if all(s["conv"] >= 0.9 for s in st.values()) and conv_all is None:
            conv_all = tr.steps
        G = topo.spec.groups[3]
        if all(s["conv"] >= (0.8 if (n == "head_out" and G == 4) else 0.9) for n, s in st.items()) and relaxed is None:
            relaxed = tr.steps
        if relaxed is not None and tr.steps >= relaxed + 200:   # 200 extra steps to see stability
            break
ms = 1000 * (time.perf_counter() - t0) / tr.steps
mats = {n: assign.matrix(n).detach() for n in assign.names}
part, rep = partition_from_assignments(topo, mats)
head = [k for k in part if "fc_out" in k or "head" in k or k.endswith("out")]
classes = {k: part[k].int().argmax(0).tolist() for k in part if part[k].shape[1] == 10}
val = evaluate(net, data["val"])
out = {"arch": arch, "side": side, "split": split, "method": method, "seed": seed, "steps": tr.steps, "ms_per_step": round(ms, 1),
       "all_converged_step": conv_all, "relaxed_converged_step": relaxed, "first_conv90": first, "freeze_rule_step": freeze, "repairs": rep,
       "class_groups": classes, "group_val_error": round(val, 2), "final": curve[-1], "load_start": load0, "load_end": load_info(), "curve": curve}
open("/tmp/cpu-study/out/conv.jsonl", "a").write(json.dumps(out) + "\n")
print(json.dumps({k: v for k, v in out.items() if k not in ("curve",)}), flush=True)
