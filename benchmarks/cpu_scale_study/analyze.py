import json, itertools, statistics as st
SUP = [0, 2, 0, 0, 0, 1, 0, 1, 2, 1]
def purity(groups):
    # fraction of same-superclass class pairs that share a group, and of cross-superclass pairs that are separated
    same = [(i, j) for i, j in itertools.combinations(range(10), 2) if SUP[i] == SUP[j]]
    diff = [(i, j) for i, j in itertools.combinations(range(10), 2) if SUP[i] != SUP[j]]
    a = sum(groups[i] == groups[j] for i, j in same) / len(same)
    b = sum(groups[i] != groups[j] for i, j in diff) / len(diff)
    return round(a, 2), round(b, 2)
rows = [json.loads(l) for l in open("/tmp/cpu-study/out/conv.jsonl")]
print("| arch/side | split | method | seed | ms/step | all vars >=90% cols max>0.9 | per-variable first step | overlap-freeze (<20% fuzzy) all vars | class groups | same-super together / cross separated | final conv fractions |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    g = r["class_groups"].get("head_out")
    fz = max(r["freeze_rule_step"].values()) if len(r["freeze_rule_step"]) == len(r["final"]) - 1 else "not all"
    fin = {k: v[0] for k, v in r["final"].items() if k != "step"}
    print(f"| {r['arch']} {r['side']} | {r['split']} | {r['method']} | {r['seed']} | {r['ms_per_step']} | {r['all_converged_step'] or 'no (cap %d)' % r['steps']} | "
          f"{r['first_conv90']} | {fz} | {g} | {purity(g) if g else ''} | {fin} |")
