"""A small CNN on scikit-learn's digits, watched by TrainingMonitor: writes the six-panel plot and
the history, and prints the findings.

    PYTHONPATH=. python examples/monitor_digits.py [--epochs 12] [--out training_monitor.png] [--csv history.csv]
"""

import argparse

import torch
from sklearn.datasets import load_digits

import fused_optim as fo
from fused_optim.training import TrainingMonitor


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", default="training_monitor.png")
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    (x_train, y_train), (x_val, y_val) = (x[:1400], y[:1400]), (x[1400:], y[1400:])

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), fo.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(32 * 4 * 4, 10))
    batches = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(1)).split(64)
    opt = fo.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.epochs * len(batches))
    monitor = TrainingMonitor(model, opt, sync_every=50)
    monitor.attach()  # the optimizer calls monitor.step() before each of its steps

    for epoch in range(args.epochs):
        model.train()
        total, correct = 0.0, 0
        for batch in torch.randperm(len(y_train)).split(64):
            opt.zero_grad()
            out = model(x_train[batch])
            loss = torch.nn.functional.cross_entropy(out, y_train[batch])
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * len(batch)
            correct += (out.argmax(1) == y_train[batch]).sum().item()
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            val_loss = torch.nn.functional.cross_entropy(out, y_val).item()
            val_acc = (out.argmax(1) == y_val).float().mean().item()
        monitor.log_epoch(train_loss=total / len(y_train), val_loss=val_loss, train_acc=correct / len(y_train),
                          val_acc=val_acc)
        print(f"epoch {epoch + 1}: train loss {total / len(y_train):.4f}, val loss {val_loss:.4f}, "
              f"val acc {val_acc:.4f}")

    monitor.plot(args.out)
    if args.csv:
        monitor.to_csv(args.csv)
    findings = monitor.detect_issues()
    print("findings:", *([str(f) for f in findings] or ["none"]), sep="\n  ")
    print("plot written to", args.out)


if __name__ == "__main__":
    main()
