"""The training curves of bfloat16 Adam under each master_weights option against the float32
model, on the linear regression of tests/test_optim_master_weights.py (2,000 steps, lr 1e-3):
plain rounding to nearest stalls, "fp32", "kahan" and "stochastic" follow the float32 loss.

    PYTHONPATH=. python benchmarks/low_precision_training.py benchmarks/results/low_precision_training.png
"""

import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from test_optim_master_weights import train_linear_regression  # noqa: E402


def main(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {"float32 model": train_linear_regression(None, torch.float32)}
    for master in (None, "fp32", "kahan", "stochastic"):
        runs[f"bfloat16, master_weights={master!r}"] = train_linear_regression(master)
    final = {name: sum(losses[-100:]) / 100 for name, losses in runs.items()}
    reference = final["float32 model"]
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = ["k-", "r-", "b--", "g-.", "m:"]
    for (name, losses), style in zip(runs.items(), styles):
        ax.plot(losses, style, label=f"{name}: final {final[name]:.4g} ({final[name] / reference:.3f}x)", lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (MSE)")
    ax.set_title("Adam, lr 1e-3, linear regression: bfloat16 weights vs float32")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    with open(pathlib.Path(path).with_suffix(".json"), "w") as f:
        json.dump({"final_loss_last_100_steps": final, "ratio_to_float32": {k: v / reference for k, v in final.items()}},
                  f, indent=1)
    for name, value in final.items():
        print(f"{name:40} {value:.5g}  {value / reference:.3f}x")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/low_precision_training.png")
