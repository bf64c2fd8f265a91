import sys, time
from splitnet.data import prepare_data
for side in (16, 12, 8):
    t=time.time()
    cfg = {"source": "fashion_mnist", "root": "/usr/share/datasets/fashion-mnist", "val_size": 3000,
           "val_per_class": 200, "test_per_class": 1000, "resize": side, "seed": 0}
    print(prepare_data(cfg, f"/tmp/cpu-study/data{side}") is not None, side, time.time()-t)
