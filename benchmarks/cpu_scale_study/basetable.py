import json, statistics as st, collections
rows = [json.loads(l) for l in open("/tmp/cpu-study/out/base.jsonl")]
by = collections.defaultdict(list)
for r in rows: by[(r["side"], r["budget"])].append(r)
print("| data | steps (lr 0.1, x0.1 at 40/60/80%) | seeds | test error % per seed | mean | std | val error mean | ms/step (load) |")
print("|---|---|---|---|---|---|---|---|")
for (side, b), rs in sorted(by.items()):
    e = [r["test_error"] for r in rs]; v = [r["val_error"] for r in rs]
    print(f"| {'57k train' if side == '12' else '20k train'} 12x12 | {b} | {len(rs)} | {e} | {st.mean(e):.2f} | {st.stdev(e) if len(e) > 1 else float('nan'):.2f} | {st.mean(v):.2f} | {[r['ms_per_step_incl_mid_evals'] for r in rs]} |")
