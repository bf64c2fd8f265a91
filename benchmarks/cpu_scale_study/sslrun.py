"""python sslrun.py ARCH SIDE BASELINE_PT STEPS MODE STRENGTH [seed]; MODE = subgrad | prox. lr .1 with milestones .4/.6/.8"""
import sys, time, json, torch
from common import *
from splitnet.ssl import group_lasso_penalty, channels_to_keep, prune, zero_pruned_weights, _units
arch, side, src, steps, mode, lam = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
seed = int(sys.argv[7]) if len(sys.argv) > 7 else 0
data = load(side)
net = dense(arch, bn_no_scale=False); net.load_state_dict(torch.load(src)); 
shape = (1, side, side); base_params = count_model(dense(arch), shape).params
tr = Trainer(net, data["train"], 90, 5e-4, 0.1, seed=seed)
convs = [c for u in _units(net) for c in (u.conv1, u.conv2, u.shortcut) if c is not None]

@torch.no_grad()
def prox():
    lr = tr.opt.param_groups[0]["lr"]; t = lr * lam
    for w in [c.weight for c in convs]:
        for dim in (0, 1):
            wt = w.transpose(0, dim)
            n = wt.flatten(1).norm(dim=1).clamp_min(1e-12)
            wt.mul_((1 - t / n).clamp_min(0).view(-1, *[1] * (wt.dim() - 1)))
    w = net.fc.weight; n = w.norm(dim=0).clamp_min(1e-12); w.mul_((1 - t / n).clamp_min(0))

reg = (lambda: lam * group_lasso_penalty(net)) if mode == "subgrad" else None
after = prox if mode == "prox" else None
ms = [round(f * steps) for f in (0.4, 0.6, 0.8)]
load0 = load_info(); t0 = time.perf_counter(); hist = {}
def pruned_stats():
    kept = channels_to_keep(net, 1e-3)
    small = prune(net, kept)
    return 100 * (1 - count_model(small, shape).params / base_params)
while tr.steps < steps:
    tr.set_lr_factor(0.1 ** sum(tr.steps >= m for m in ms))
    tr.step(reg, after)
    if tr.steps % (steps // 4) == 0:
        hist[tr.steps] = round(pruned_stats(), 1)
msps = 1000 * (time.perf_counter() - t0) / steps
kept = channels_to_keep(net, 1e-3); zero_pruned_weights(net, kept); small = prune(net, kept)
kc = sum(len(k) for k in kept.streams[1:]) + sum(len(h) for hs in kept.hidden for h in hs)
tot = sum(s.width for s in net.plan.stages) + sum(sum(s.hidden) for s in net.plan.stages)
out = {"arch": arch, "side": side, "steps": steps, "mode": mode, "strength": lam, "seed": seed,
       "params_pruned_pct": round(100 * (1 - count_model(small, shape).params / base_params), 1),
       "kept_channels": f"{kc}/{tot}", "pruned_pct_at": hist,
       "test_error_pruned_no_finetune": round(evaluate(small, data["test"]), 2), "ms_per_step": round(msps, 1),
       "load_start": load0, "load_end": load_info()}
open("/tmp/cpu-study/out/ssl.jsonl", "a").write(json.dumps(out) + "\n"); print(json.dumps(out), flush=True)
