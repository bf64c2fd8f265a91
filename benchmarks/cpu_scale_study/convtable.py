import json
rows = [json.loads(l) for l in open("/tmp/cpu-study/out/conv.jsonl")]
INIT = {("1-2-2", 0): [1, 1, 1, 0, 1, 1, 0, 0, 0, 1], ("2-2-2", 0): [1, 1, 1, 0, 1, 1, 0, 0, 0, 1], ("1-2-2", 1): [0, 1, 0, 1, 0, 1, 1, 1, 0, 1],
        ("2-2-2", 1): [0, 1, 0, 1, 0, 1, 1, 1, 0, 1], ("1-3-3", 0): [1, 0, 1, 0, 1, 1, 0, 0, 1, 1], ("2-4-4", 0): [3, 3, 1, 2, 3, 1, 3, 2, 1, 1]}
def first(curve, pred):
    for c in curve:
        if pred(c): return c["step"]
    return None
print("| split | method | seed | all vars >=0.9 (strict) | all vars, head_out >=0.8 when G=4 | slowest variable | all vars <20% fuzzy (overlap freeze) | class groups | = init argmax? | steps run |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    cur = r["curve"]; names = [k for k in cur[0] if k != "step"]
    G = int(r["split"].split("-")[2])
    strict = first(cur, lambda c: all(c[n][0] >= 0.9 for n in names))
    relax = first(cur, lambda c: all(c[n][0] >= (0.8 if n == "head_out" and G == 4 else 0.9) for n in names))
    fz = first(cur, lambda c: all(c[n][1] < 0.2 for n in names))
    per = {n: first(cur, lambda c, n=n: c[n][0] >= (0.8 if n == "head_out" and G == 4 else 0.9)) for n in names}
    slow = max(per.items(), key=lambda kv: kv[1] if kv[1] is not None else 10**9)
    g = r["class_groups"]["head_out"]; init = INIT.get((r["split"], r["seed"]))
    same = f"{sum(a == b for a, b in zip(g, init))}/10" if init else ""
    fin = "" if relax else " (final: " + ", ".join(f"{n} {cur[-1][n][0]:.2f}" for n in names) + ")"
    print(f"| {r['split']} | {r['method']} | {r['seed']} | {strict or '>' + str(r['steps'])} | {relax or '>' + str(r['steps'])}{fin} | {slow[0]} @ {slow[1]} | {fz or '>' + str(r['steps'])} | {g} | {same} | {r['steps']} |")
