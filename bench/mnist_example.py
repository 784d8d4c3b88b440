"""PyTorch's MNIST example recipe (`models/mnist_example.od`) on the shared EMNIST data, odc and
PyTorch side by side.

    python bench/mnist_example.py [--data ../shared/data] [--epochs 3] [--threads 2]

Both train the network of pytorch/examples' mnist/main.py (47 outputs) with its recipe:
negative log-likelihood of log_softmax outputs, Adadelta(lr=1.0), StepLR(step_size=1,
gamma=0.7), batch 64; on the same split (odc's loader: when the folder holds only EMNIST's
ByMerge test split, it is cut into training and test parts per class, as `odc compile-and-train`
cuts it), images scaled to [0, 1] (neither side normalises them). Each side draws its own
initial weights, dropout masks and batch order. odc runs `odc compile-and-train`
(`odc.runtime.train.compile_and_train`); PyTorch the usual eager loop in `torch.nn`. Prints
the test accuracy, mean training loss and seconds of each epoch, and the rate of each epoch.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = ROOT / "models" / "mnist_example.od"


def torch_run(data, epochs: int, threads: int) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from odc.runtime.data import as_float

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class Net(nn.Module):  # pytorch/examples mnist/main.py, 47 outputs
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
            self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
            self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, len(data.classes))

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
            x = self.dropout2(F.relu(self.fc1(torch.flatten(self.dropout1(x), 1))))
            return F.log_softmax(self.fc2(x), dim=1)

    net = Net()
    opt = torch.optim.Adadelta(net.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    test_x, test_y = torch.tensor(as_float(data.test_x)), torch.tensor(data.test_y.astype("int64"))
    out = []
    for epoch in range(1, epochs + 1):
        lr = opt.param_groups[0]["lr"]
        net.train()
        t0, total = time.perf_counter(), 0.0
        order = torch.randperm(len(data.train_y))
        for start in range(0, len(order), 64):
            idx = order[start:start + 64].numpy()
            x, y = torch.tensor(as_float(data.train_x[idx])), torch.tensor(data.train_y[idx].astype("int64"))
            opt.zero_grad()
            loss = F.nll_loss(net(x), y)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        seconds = time.perf_counter() - t0
        sched.step()
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(test_x[i:i + 1000]).argmax(1) for i in range(0, len(test_y), 1000)])
        out.append({"epoch": epoch, "lr": lr, "train_loss": total / len(order),
                    "test_accuracy": (pred == test_y).float().mean().item(), "train_seconds": seconds})
    return out


def odc_run(data_dir, epochs: int) -> list[dict]:
    from odc.runtime.train import compile_and_train

    with tempfile.TemporaryDirectory() as tmp:
        run = compile_and_train(MODEL, epochs=epochs, data_dir=data_dir, out=Path(tmp) / "run",
                                log=lambda *_: None)
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the data folder")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="PyTorch's threads (odc uses the machine's cores)")
    a = ap.parse_args()
    from odc.runtime.data import load_dataset

    data = load_dataset(["emnist", "balanced"], a.data)
    print(f"{data.name} from {data.source}: {len(data.train_y):,} train / {len(data.test_y):,} test images")
    mine, theirs = odc_run(a.data, a.epochs), torch_run(data, a.epochs, a.threads)
    print("| epoch | lr | odc test accuracy | PyTorch test accuracy | odc train loss | PyTorch train loss "
          "| odc s | PyTorch s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, t in zip(mine, theirs):
        print(f"| {m['epoch']} | {m['lr']:.4g} / {t['lr']:.4g} | {m['test_accuracy']:.2%} | {t['test_accuracy']:.2%} "
              f"| {m['train_loss']:.4f} | {t['train_loss']:.4f} | {m['train_seconds']:.0f} | {t['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
