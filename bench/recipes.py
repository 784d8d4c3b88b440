"""Recipes trained by odc and by PyTorch side by side, on the same data: each model of `RECIPES`
with its own train block in odc (`odc compile-and-train`), and the same network, recipe and data
in PyTorch's usual eager loop (`torch.nn`, `torch.optim`, `torch.optim.lr_scheduler`).

    python bench/recipes.py mnist_example [--data ../shared/data] [--epochs 3] [--threads 2]
    python bench/recipes.py cifar_cnn [--epochs 5]
    python bench/recipes.py vgg11 --epochs 3

- `mnist_example` (models/mnist_example.od): pytorch/examples' mnist/main.py with 47 outputs:
  nll of log_softmax outputs, Adadelta(lr=1.0), StepLR(step_size=1, gamma=0.7), batch 64, on
  EMNIST (when the folder holds only ByMerge's test split, odc cuts it into training and test
  parts per class, and both sides use those parts), images in [0, 1] (neither side normalises).
- `cifar_cnn` (models/cifar_cnn.od), `resnet20` (models/resnet20.od) and `vgg11`
  (models/vgg11.od), their networks as the twins of tests/test_zoo.py: CIFAR-10 with a
  validation part held out as odc holds it out (10% of each class, seed 0); random 32x32 crops
  of the 4-pixel zero-padded image and horizontal flips (torchvision's RandomCrop(32, padding=4)
  and RandomHorizontalFlip, written here in numpy), per-channel normalisation, SGD with
  momentum (Nesterov for cifar_cnn) and weight decay, CosineAnnealingLR over the run, batch 128.
Both cut each epoch into batches as odc does (`odc.runtime.train.epoch_batches`: a last, partial
batch is filled up with images drawn from the rest of the epoch). Each side draws its own initial
weights, dropout masks, augmentations and batch order. Prints,
per epoch, the rate, accuracy on the evaluated part, mean training loss and seconds of each.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def mnist_net(torch, classes: int):
    nn, F = torch.nn, torch.nn.functional

    class Net(nn.Module):  # pytorch/examples mnist/main.py
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
            self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
            self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
            x = self.dropout2(F.relu(self.fc1(torch.flatten(self.dropout1(x), 1))))
            return F.log_softmax(self.fc2(x), dim=1)
    return Net()


def zoo_net(name: str):
    """The PyTorch twin of a CIFAR-10 model of the zoo (tests/test_zoo.py)."""
    def make(torch, classes: int):
        from tests.test_zoo import twins
        return twins(torch)[name][0]()
    return make


MEAN, STD = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])


def crop_and_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RandomCrop(32, padding=4) then RandomHorizontalFlip() on uint8 [n, 3, 32, 32]."""
    padded = np.pad(images, ((0, 0), (0, 0), (4, 4), (4, 4)))
    out = np.empty_like(images)
    for i, (top, left, flip) in enumerate(zip(rng.integers(0, 9, len(images)), rng.integers(0, 9, len(images)),
                                              rng.random(len(images)) < 0.5)):
        crop = padded[i, :, top:top + 32, left:left + 32]
        out[i] = crop[:, :, ::-1] if flip else crop
    return out


RECIPES = {  # name: (model file, network, loss, optimizer, schedule, batch, augment, normalize)
    "mnist_example": ("mnist_example.od", mnist_net, "nll",
                      lambda t, ps, epochs: t.optim.Adadelta(ps, lr=1.0),
                      lambda t, opt, epochs: t.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7),
                      64, None, False),
    "cifar_cnn": ("cifar_cnn.od", zoo_net("cifar_cnn.od"), "cross_entropy",
                  lambda t, ps, epochs: t.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
                  lambda t, opt, epochs: t.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
                  128, crop_and_flip, True),
    "resnet20": ("resnet20.od", zoo_net("resnet20.od"), "cross_entropy",
                 lambda t, ps, epochs: t.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4),
                 lambda t, opt, epochs: t.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
                 128, crop_and_flip, True),
    "vgg11": ("vgg11.od", zoo_net("vgg11.od"), "cross_entropy",
              lambda t, ps, epochs: t.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4),
              lambda t, opt, epochs: t.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
              128, crop_and_flip, True),
}


def torch_run(name: str, data, epochs: int, threads: int) -> list[dict]:
    import torch

    from odc.runtime.data import as_float
    from odc.runtime.train import epoch_batches

    _, make_net, loss_name, make_opt, make_sched, batch, augment, normalize = RECIPES[name]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = make_net(torch, len(data.classes))
    opt = make_opt(torch, net.parameters(), epochs)
    sched = make_sched(torch, opt, epochs)
    loss_fn = getattr(torch.nn.functional, "nll_loss" if loss_name == "nll" else loss_name)

    def prepare(images):
        x = as_float(images)
        if normalize:
            x = ((x - MEAN[None, :, None, None]) / STD[None, :, None, None]).astype(np.float32)
        return torch.tensor(x)
    eval_x, eval_y = (data.valid_x, data.valid_y) if data.valid_x is not None else (data.test_x, data.test_y)
    out = []
    for epoch in range(1, epochs + 1):
        lr = opt.param_groups[0]["lr"]
        net.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        for idx in epoch_batches(len(data.train_y), batch, rng):  # odc's batches: the last filled up
            images = data.train_x[idx] if augment is None else augment(data.train_x[idx], rng)
            x, y = prepare(images), torch.tensor(data.train_y[idx].astype("int64"))
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        seconds = time.perf_counter() - t0
        sched.step()
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(prepare(eval_x[i:i + 1000])).argmax(1) for i in range(0, len(eval_y), 1000)])
        out.append({"epoch": epoch, "lr": lr, "train_loss": total / seen,
                    "accuracy": (pred.numpy() == eval_y).mean(), "train_seconds": seconds})
    return out


def odc_run(name: str, data_dir, epochs: int) -> list[dict]:
    from odc.runtime.train import compile_and_train

    with tempfile.TemporaryDirectory() as tmp:
        run = compile_and_train(ROOT / "models" / RECIPES[name][0], epochs=epochs, data_dir=data_dir,
                                out=Path(tmp) / "run", log=lambda *_: None)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{**r, "accuracy": r.get("valid_accuracy", r.get("test_accuracy"))} for r in records]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", choices=list(RECIPES))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the data folder")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="PyTorch's threads (odc uses the machine's cores)")
    a = ap.parse_args()
    import odc
    from odc.runtime.data import hold_out, load_dataset

    recipe = odc.load(ROOT / "models" / RECIPES[a.recipe][0]).recipe
    data = load_dataset(recipe["data"], a.data)
    if data.test_x is None:  # as odc compile-and-train holds out its validation part
        data = hold_out(data, 0.1, recipe["seed"])
    part = "validation" if data.valid_x is not None else "test"
    print(f"{data.name} from {data.source}: {len(data.train_y):,} train / {len(data.valid_y if part == 'validation' else data.test_y):,} "
          f"{part} images; {a.epochs} epochs")
    mine, theirs = odc_run(a.recipe, a.data, a.epochs), torch_run(a.recipe, data, a.epochs, a.threads)
    print(f"| epoch | lr (odc / PyTorch) | odc {part} accuracy | PyTorch {part} accuracy | odc train loss "
          f"| PyTorch train loss | odc s | PyTorch s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, t in zip(mine, theirs):
        print(f"| {m['epoch']} | {m['lr']:.4g} / {t['lr']:.4g} | {m['accuracy']:.2%} | {t['accuracy']:.2%} "
              f"| {m['train_loss']:.4f} | {t['train_loss']:.4f} | {m['train_seconds']:.0f} | {t['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
