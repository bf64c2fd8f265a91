"""python base.py ARCH SIDE BUDGET SEED [save] : baseline with paper milestones scaled (0.4/0.6/0.8), lr .1, wd 5e-4, b90.
Also logs test error at every 25% of the budget (lr not yet decayed there, for reference)."""
import sys, time, json, torch
from common import *
arch, side_arg, budget, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]); side = int(side_arg.rstrip("s"))
save = sys.argv[5] if len(sys.argv) > 5 else None
data = load(side_arg); torch.manual_seed(seed)
net = dense(arch, bn_no_scale=False)
tr = Trainer(net, data["train"], 90, 5e-4, 0.1, seed=seed)
ms = [round(f * budget) for f in (0.4, 0.6, 0.8)]
load0 = load_info(); t0 = time.perf_counter(); mid = {}
while tr.steps < budget:
    tr.set_lr_factor(0.1 ** sum(tr.steps >= m for m in ms))
    tr.step()
    if tr.steps % (budget // 4) == 0 and tr.steps < budget:
        mid[tr.steps] = round(evaluate(net, data["test"]), 2)
ms_step = 1000 * (time.perf_counter() - t0) / budget
out = {"arch": arch, "side": side_arg, "budget": budget, "seed": seed, "test_error": round(evaluate(net, data["test"]), 2),
       "val_error": round(evaluate(net, data["val"]), 2), "mid": mid, "ms_per_step_incl_mid_evals": round(ms_step, 1),
       "load_start": load0, "load_end": load_info()}
if save: torch.save(net.state_dict(), save)
open("/tmp/cpu-study/out/base.jsonl", "a").write(json.dumps(out) + "\n"); print(json.dumps(out), flush=True)
