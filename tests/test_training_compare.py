"""fused_optim.training.compare_optimizers, its JSON and plot, and the lr-find / compare commands."""

import json
import math
import struct
import sys

import pytest
import torch

import fused_optim
import fused_optim as fo
from fused_optim.cli import main
from fused_optim.training import Comparison, compare_optimizers, default_optimizer, default_optimizers
from fused_optim.training import compare as compare_module

pytest.importorskip("sklearn")


def data(n=96, features=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = x[:, :classes].argmax(1)
    dataset = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(64)), batch_size=16, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(64, n)), batch_size=32)
    return train, val


def model_fn():
    # Deliberately unseeded: compare_optimizers must give every optimizer the same weights anyway.
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 3))


def recording(factory, seen):
    def wrapped(params):
        params = list(params)
        seen.append([p.detach().clone() for p in params])
        return factory(params)
    return wrapped


def test_same_initial_weights_and_curves_of_the_right_length():
    train, val = data()
    seen = []
    optimizers = {name: recording(f, seen) for name, f in default_optimizers(("sgd", "adam", "rmsprop")).items()}
    result = compare_optimizers(model_fn, optimizers, train, val, epochs=3)
    assert len(seen) == 3
    for weights in seen[1:]:
        assert all(torch.equal(a, b) for a, b in zip(weights, seen[0]))
    assert list(result.runs) == ["sgd", "adam", "rmsprop"]
    assert result.steps_per_epoch == 4
    for run in result.runs.values():
        for key in ("train_loss", "val_loss", "val_accuracy", "step_time_s", "optimizer_step_time_s"):
            values = getattr(run, key)
            assert len(values) == 3 and all(isinstance(v, float) and math.isfinite(v) for v in values), (run.name, key)
        assert all(0.0 <= a <= 1.0 for a in run.val_accuracy)
        assert all(0 < t <= s for t, s in zip(run.optimizer_step_time_s, run.step_time_s))
        assert run.diverged_epoch is None
    assert result.runs["adam"].train_loss[-1] < result.runs["adam"].train_loss[0]  # it learns


def test_deterministic_under_a_seed():
    def losses(seed):
        train, val = data()
        result = compare_optimizers(model_fn, ["adam", "adagrad"], train, val, epochs=2, seed=seed)
        return {name: (run.train_loss, run.val_loss, run.val_accuracy) for name, run in result.runs.items()}

    first = losses(3)
    assert losses(3) == first
    assert losses(4) != first


def test_scheduler_and_divergence():
    train, val = data()
    optimizers = {"sgd": default_optimizer("sgd", lr=0.01), "huge": default_optimizer("sgd", lr=1e30)}
    lrs = []

    def scheduler_fn(optimizer):
        lrs.append(optimizer)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    result = compare_optimizers(model_fn, optimizers, train, val, epochs=3, scheduler_fn=scheduler_fn)
    assert lrs[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 3)
    huge = result.runs["huge"]
    assert huge.diverged_epoch is not None
    after = huge.diverged_epoch  # entries after the divergent epoch are None, the lists keep their length
    assert len(huge.train_loss) == 3 and huge.train_loss[after:] == [None] * (3 - after)
    assert "diverged in epoch" in result.table()


def test_default_factories_and_the_fallback_for_missing_fused_optimizers(monkeypatch):
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert type(default_optimizer("adam")(params)) is fo.Adam
    assert type(default_optimizer("adam", "torch")(params)) is torch.optim.Adam
    assert default_optimizer("sgd", lr=0.3)(params).param_groups[0]["lr"] == 0.3
    # Looked up on fused_optim when the factory is called: torch's class only while fused_optim has none.
    monkeypatch.delattr(fused_optim, "RMSprop", raising=False)
    factory = default_optimizer("rmsprop")
    assert type(factory(params)) is torch.optim.RMSprop

    class RMSprop(torch.optim.RMSprop):
        pass

    monkeypatch.setattr(fused_optim, "RMSprop", RMSprop, raising=False)
    assert type(factory(params)) is RMSprop
    assert compare_module.optimizer_class("rmsprop", "torch") is torch.optim.RMSprop
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        default_optimizer("lamb")
    with pytest.raises(ValueError, match="unknown implementation 'jax'"):
        default_optimizer("adam", "jax")


def test_bad_arguments():
    train, val = data()
    with pytest.raises(ValueError, match="epochs must be"):
        compare_optimizers(model_fn, ["adam"], train, val, epochs=0)
    with pytest.raises(ValueError, match="optimizers must be a non-empty"):
        compare_optimizers(model_fn, {}, train, val)
    with pytest.raises(TypeError, match=r"optimizers\['adam'\] must be a factory"):
        compare_optimizers(model_fn, {"adam": 3}, train, val)


# The JSON document of Comparison.to_json (schema fused_optim.compare/1), as documented in the README.
TOP_KEYS = {"schema", "epochs", "seed", "device", "steps_per_epoch", "optimizers"}
RUN_KEYS = {"optimizer", "train_loss", "val_loss", "val_accuracy", "step_time_s", "optimizer_step_time_s",
            "diverged_epoch", "final", "best"}
FIGURES = {"train_loss", "val_loss", "val_accuracy"}


def check_compare_document(document, names, epochs):
    assert TOP_KEYS <= document.keys()
    assert document["schema"] == "fused_optim.compare/1" and document["epochs"] == epochs
    assert list(document["optimizers"]) == names
    for name, run in document["optimizers"].items():
        assert run.keys() == RUN_KEYS
        assert isinstance(run["optimizer"], str) and "(" in run["optimizer"]
        for key in ("train_loss", "val_loss", "val_accuracy", "step_time_s", "optimizer_step_time_s"):
            assert len(run[key]) == epochs and all(v is None or isinstance(v, float) for v in run[key])
        assert run["final"].keys() == FIGURES and run["best"].keys() == FIGURES
        assert run["final"]["train_loss"] == run["train_loss"][-1]
        assert run["best"]["val_accuracy"] == max(v for v in run["val_accuracy"] if v is not None)


def png_size(path):
    head = open(path, "rb").read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_json_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    train, val = data()
    result = compare_optimizers(model_fn, ["sgd", "adamw"], train, val, epochs=2)
    assert isinstance(result, Comparison)
    result.to_json(tmp_path / "c.json")
    check_compare_document(json.loads((tmp_path / "c.json").read_text()), ["sgd", "adamw"], 2)
    table = result.table()
    assert table.splitlines()[0].split()[:3] == ["optimizer", "train", "loss"] and "val acc" in table
    assert all(name in table for name in ("sgd", "adamw"))
    result.plot(tmp_path / "c.png")
    assert png_size(tmp_path / "c.png") == (1210, 462)  # 11 x 4.2 inches at 110 dpi: loss and accuracy side by side

    no_val = compare_optimizers(model_fn, ["adam"], train, epochs=2)
    document = no_val.to_dict()
    assert document["optimizers"]["adam"]["val_loss"] == [None, None]
    no_val.plot(tmp_path / "n.png")
    assert png_size(tmp_path / "n.png") == (660, 462)  # the loss panel alone
    assert "val loss" not in no_val.table()


# ----- the commands --------------------------------------------------------------------------

def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_lr_find_command(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "lr-find", "--optimizers", "adam,rmsprop", "--num-iter", "8", "--train-size", "64",
                         "--json", str(tmp_path / "l.json"), "--plot", str(tmp_path / "l.png"))
    assert code == 0, err
    document = json.loads((tmp_path / "l.json").read_text())
    assert document["schema"] == "fused_optim.lr-find/1" and list(document["results"]) == ["adam", "rmsprop"]
    for result in document["results"].values():
        assert len(result["lrs"]) == len(result["losses"]) == len(result["raw_losses"]) <= 8
        assert set(result["suggestions"]) == {"valley", "steepest", "minimum"}
    assert document["settings"]["num_iter"] == 8 and document["settings"]["model"] == "mlp"
    assert "valley" in out and "adam" in out and "fused_optim.optim.adam.Adam" in out
    assert "[1/8" in err and "\r" not in err  # progress on a pipe: plain lines
    assert png_size(tmp_path / "l.png")[0] > 500


def test_compare_command(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "compare", "--model", "cnn", "--optimizers", "sgd,adam", "--epochs", "2",
                         "--train-size", "64", "--implementation", "torch", "--json", str(tmp_path / "c.json"),
                         "--plot", str(tmp_path / "c.png"))
    assert code == 0, err
    document = json.loads((tmp_path / "c.json").read_text())
    check_compare_document(document, ["sgd", "adam"], 2)
    assert document["settings"]["implementation"] == "torch" and document["command"][0] == "fused-optim"
    assert document["optimizers"]["adam"]["optimizer"].startswith("torch.optim")
    assert "optimizer" in out and "val acc" in out
    assert "[1/4" in err and "sgd epoch 1/2" in err and "\r" not in err
    assert png_size(tmp_path / "c.png") == (1210, 462)


@pytest.mark.parametrize("argv, message", [
    (["lr-find", "--model", "resnet"], "invalid choice: 'resnet'"),
    (["lr-find", "--optimizers", "lamb"], "unknown optimizers 'lamb'"),
    (["lr-find", "--dataset", "mnist"], "invalid choice: 'mnist'"),
    (["lr-find", "--start-lr", "1", "--end-lr", "0.1"], "--end-lr 0.1 must be above --start-lr 1"),
    (["lr-find", "--start-lr", "0"], "expected a positive number"),
    (["lr-find", "--num-iter", "1"], "--num-iter must be at least 2"),
    (["lr-find", "--json", "/nonexistent-folder/l.json"], "the folder /nonexistent-folder does not exist"),
    (["compare", "--epochs", "0"], "expected at least 1"),
    (["compare", "--implementation", "jax"], "invalid choice: 'jax'"),
    (["compare", "--device", "meta"], "not meta"),
    (["compare", "--batch-size", "many"], "expected a whole number"),
    (["compare", "--plot", "."], "is a folder"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_bad_arguments_exit_2_before_running(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert out == ""


def test_missing_packages_are_reported_before_running(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run(capsys, "compare", "--plot", str(tmp_path / "c.png"))
    assert code == 2 and "--plot needs matplotlib" in err and out == ""
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    code, out, err = run(capsys, "lr-find")
    assert code == 2 and "needs scikit-learn" in err and out == ""
