from common import *
import sys
data = {"train": (torch.zeros(100,1,12,12,dtype=torch.uint8), torch.zeros(100,dtype=torch.long))}
for split in ("1-2-2", "2-2-2", "1-3-3", "2-4-4"):
  for seed in (0, 1):
    dp = 0.5 if split.startswith("2") else 0.0
    net, topo, assign, tr, regf = make_grouping("wrn-10-1", split, "softmax", dropout=dp, seed=seed, train=data["train"])
    print(split, seed, "init argmax head_out", assign.matrix("head_out").argmax(0).tolist())
