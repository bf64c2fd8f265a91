from splitnet.data import prepare_data
cfg = {"source": "fashion_mnist", "root": "/usr/share/datasets/fashion-mnist", "val_size": 3000, "train_per_class": 2000,
       "val_per_class": 200, "test_per_class": 1000, "resize": 12, "seed": 0}
prepare_data(cfg, "/tmp/cpu-study/data12s")
