"""scikit-learn's bundled digits (1,797 8x8 images, no download) and two small models for them.

Shared by the toolkit's commands and tests: ``digits_tensors`` splits the data the same way for every
caller, ``digits_loaders`` wraps it in DataLoaders, ``mlp``/``cnn`` build the models (``flat`` inputs of
64 features for the MLP, ``(1, 8, 8)`` images for the CNN).
"""

import torch

MODELS = ("mlp", "cnn")
NUM_CLASSES = 10


def sklearn_missing():
    """None when scikit-learn can be imported, else what to install."""
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        return "the digits dataset needs scikit-learn, which is not installed: pip install scikit-learn"
    return None


def digits_tensors(val_fraction=0.2, seed=0, image=False):
    """``((x_train, y_train), (x_val, y_val))``: pixels scaled to [0, 1], a shuffled split fixed by ``seed``.

    ``image=False`` gives ``(n, 64)`` rows (for ``mlp``), ``image=True`` ``(n, 1, 8, 8)`` (for ``cnn``).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    if image:
        x = x.reshape(-1, 1, 8, 8)
    n_val = int(round(len(y) * val_fraction))
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])


def digits_loaders(batch_size=64, val_fraction=0.2, seed=0, image=False, train_size=None):
    """``(train_loader, val_loader)`` over ``digits_tensors``; the training loader shuffles.

    The shuffle draws from torch's global generator, as a default DataLoader does, so seeding torch
    fixes the batch order. ``train_size`` keeps only the first that many training examples.
    """
    from torch.utils.data import DataLoader, TensorDataset

    (x, y), (x_val, y_val) = digits_tensors(val_fraction, seed, image)
    if train_size is not None:
        x, y = x[:train_size], y[:train_size]
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=512)
    return train, val


def mlp(hidden=64):
    """64 -> hidden -> ReLU -> 10: no batch statistics."""
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, NUM_CLASSES))


def cnn(channels=16):
    """Two 3x3 convolutions with BatchNorm, a 2x2 max-pool and a linear head, for (1, 8, 8) images."""
    c = channels
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, c, 3, padding=1), torch.nn.BatchNorm2d(c), torch.nn.ReLU(),
        torch.nn.Conv2d(c, 2 * c, 3, padding=1), torch.nn.BatchNorm2d(2 * c), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(2 * c * 16, NUM_CLASSES),
    )


def build_model(name):
    """``mlp()`` or ``cnn()`` by name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
    return mlp() if name == "mlp" else cnn()


def model_input_is_image(name):
    return name == "cnn"
