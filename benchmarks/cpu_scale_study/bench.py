import sys, time, json, torch
from common import *
from splitnet.partition import random_partition
res = []
def timeit(fn, n, warm=5):
    for _ in range(warm): fn()
    t = time.perf_counter()
    for _ in range(n): fn()
    return 1000 * (time.perf_counter() - t) / n
combos = [("wrn-16-1", 16), ("wrn-16-1", 12), ("wrn-16-1", 8), ("wrn-10-1", 16), ("wrn-10-1", 12), ("wrn-10-1", 8)]
batches = {c: ([64, 90, 128] if c in (("wrn-16-1", 16), ("wrn-10-1", 12)) else [90]) for c in combos}
print("LOAD start:", load_info(), flush=True)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 25
for arch, side in combos:
    data = load(side)
    for b in batches[(arch, side)]:
        row = {"arch": arch, "side": side, "batch": b}
        torch.manual_seed(0)
        net = dense(arch, bn_no_scale=False); tr = Trainer(net, data["train"], b, 5e-4, 0.1)
        row["baseline"] = timeit(lambda: tr.step(), N)
        for split, dp in (("1-2-2", 0.0), ("2-2-2", 0.5)):
            net, topo, assign, tr, regf = make_grouping(arch, split, dropout=dp, wd=1e-4, batch=b, train=data["train"])
            row[f"group_{split}"] = timeit(lambda: tr.step(regf), N)
        net, topo, assign, tr, regf = make_grouping(arch, "1-2-2", param="simplex", batch=b, train=data["train"])
        row["group_1-2-2_simplex"] = timeit(lambda: tr.step(regf), N)
        for split in ("1-2-2", "2-4-4"):
            spec = SplitSpec.parse(split); d = dense(arch, bn_no_scale=True); topo = build_topology(d.plan, spec)
            sn = build_split_network(topo, random_partition(topo, 0), "shared", "preact", dense=d)
            tr = Trainer(sn, data["train"], b, 5e-4, 0.1)
            row[f"finetune_{split}"] = timeit(lambda: tr.step(), N)
        net = dense(arch); net.to(memory_format=torch.channels_last)
        t = time.perf_counter(); evaluate(net, data["test"]); row["eval_ms_per_1k"] = 1000 * (time.perf_counter() - t) / 10
        row["load"] = os.popen("uptime").read().strip().split("load average:")[1]
        print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        res.append(row)
print("LOAD end:", load_info())
json.dump(res, open("/tmp/cpu-study/out/bench.json", "w"), indent=1)
