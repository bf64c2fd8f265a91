"""Study driver: mirrors splitnet.engine.train (same augment, normaliser, param groups, SGD) but logs
assignment convergence every few steps. Nothing here is imported by the project."""
import json, math, os, subprocess, time
import torch, torch.nn.functional as F
from splitnet.augment import Normalizer, random_crop_flip
from splitnet.assignment import GroupAssignments
from splitnet.data import load_split
from splitnet.engine import parameter_groups
from splitnet.model import WideResNet, parse_arch, wrn_plan
from splitnet.partition import fuzzy_fraction, partition_from_assignments
from splitnet.reduced_gradient import SimplexReducedGradient
from splitnet.regularizers import RegularizerConfig, split_losses
from splitnet.spec import SplitSpec
from splitnet.split import build_split_network
from splitnet.topology import build_topology
from splitnet.counting import count_model

torch.set_num_threads(1)
ROOT = "/tmp/cpu-study"

def load(side):
    d = {s: load_split(f"{ROOT}/data{side}" if isinstance(side, int) else f"{ROOT}/data{side}", s) for s in ("train", "val", "test")}
    return {s: (v["images"], v["labels"]) for s, v in d.items()}

def load_info():
    return os.popen("uptime").read().strip() + " | " + os.popen(
        "ps -eo pid,pcpu,etime,args --sort=-pcpu | awk 'NR>1 && $2>20' | cut -c1-110 | head -4 | tr '\\n' ';'").read().strip()

def dense(arch, side_ch=1, ncls=10, **kw):
    d, w = parse_arch(arch)
    return WideResNet(wrn_plan(d, w, side_ch, ncls), **kw)

def dropout_kwargs(spec, p):
    return {"dropout": p, "dropout_stages": tuple(s for s in (2, 3) if spec.groups[s - 1] > 1), "dropout_fc": spec.groups[3] > 1}

NORM = Normalizer("per_image")

@torch.no_grad()
def evaluate(model, data, bs=500):
    x_all, y_all = data
    was = model.training; model.eval(); correct = 0
    for i in range(0, len(y_all), bs):
        x = NORM(x_all[i:i+bs].float()).contiguous(memory_format=torch.channels_last)
        correct += (model(x).argmax(1) == y_all[i:i+bs]).sum().item()
    model.train(was)
    return 100.0 * (1 - correct / len(y_all))

def conv_stats(assign):
    out = {}
    for n in assign.names:
        a = assign.matrix(n).detach()
        out[n] = {"conv": float((a.max(0).values > 0.9).float().mean()), "fuzzy": fuzzy_fraction(a, 0.1),
                  "maxmean": float(a.max(0).values.mean())}
    return out

class Trainer:
    """SGD momentum with per-step lr function; optional regulariser and extra optimisers."""
    def __init__(self, model, train, batch, wd, lr, momentum=0.9, seed=0, pad=2, extra_groups=(), extra_opts=()):
        self.model, self.train, self.batch = model, train, batch
        owned = {id(p) for o in extra_opts for g in o.param_groups for p in g["params"]}
        owned |= {id(p) for g in extra_groups for p in g["params"]}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in owned]} for g in parameter_groups(model, wd)]
        groups = [g for g in groups if g["params"]] + [dict(g) for g in extra_groups]
        for g in groups: g.setdefault("lr", lr); g["base_lr"] = g["lr"]
        self.opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
        self.extra = list(extra_opts)
        for o in self.extra:
            for g in o.param_groups: g["base_lr"] = g["lr"]
        self.gen = torch.Generator().manual_seed(seed); torch.manual_seed(seed)
        self.pad = pad; self.perm = None; self.pos = 0; self.steps = 0
        model.to(memory_format=torch.channels_last); model.train()

    def set_lr_factor(self, f):
        for o in [self.opt, *self.extra]:
            for g in o.param_groups: g["lr"] = g["base_lr"] * f

    def step(self, regularizer=None, after=None):
        x_all, y_all = self.train
        if self.perm is None or self.pos + self.batch > len(y_all):
            self.perm = torch.randperm(len(y_all), generator=self.gen); self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch]; self.pos += self.batch
        x = NORM(random_crop_flip(x_all[idx], self.pad, True, self.gen)).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(self.model(x), y_all[idx])
        if regularizer is not None:
            loss = loss + regularizer()
        self.opt.zero_grad(set_to_none=True)
        for o in self.extra: o.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        for o in self.extra: o.step()
        if after is not None: after()
        self.steps += 1
        return loss

def make_grouping(arch, split, param="softmax", rule="official", dropout=0.0, wd=5e-4, lr=0.1, assign_lr=None,
                  batch=90, seed=0, train=None, gammas=(1.0, 1.0, 10.0)):
    spec = SplitSpec.parse(split)
    torch.manual_seed(seed)
    net = dense(arch, bn_no_scale=True, **dropout_kwargs(spec, dropout))
    topo = build_topology(net.plan, spec)
    assign = GroupAssignments(topo, param)
    reg = RegularizerConfig(*gammas, True)
    extra_groups, extra_opts = [], []
    if param == "simplex":
        extra_opts.append(SimplexReducedGradient(list(assign.values.values()), lr=lr, momentum=0.9, rule=rule))
    elif assign_lr is not None:
        extra_groups.append({"params": list(assign.values.values()), "lr": assign_lr, "weight_decay": 0.0})
    model = torch.nn.Module(); model.net = net; model.assignments = assign
    model.forward = net.forward
    tr = Trainer(model, train, batch, wd, lr, seed=seed, extra_groups=extra_groups, extra_opts=extra_opts)
    regf = lambda: split_losses(net, topo, assign.matrices(), reg).total
    return net, topo, assign, tr, regf
