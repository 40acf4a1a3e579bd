"""The tensor shapes ops are benchmarked on, generated in code (no downloads).

A workload gives a list of shapes for a device type, in full size or tiny (``quick``). The
optimizer and clipping ops read them as parameter shapes; the normalization ops read one shape,
the activations they normalize.
"""

import dataclasses
import math
import random
from typing import Callable, Tuple


def resnet50_shapes(width=64, num_classes=1000):
    """Parameter shapes of torchvision's ResNet-50, in module order (conv weights have no bias;
    every BatchNorm has a weight and a bias). width=64, num_classes=1000: 161 tensors, 25,557,032
    elements."""
    shapes = [(width, 3, 7, 7), (width,), (width,)]
    inplanes = width
    for stage, blocks in enumerate((3, 4, 6, 3)):
        planes = width * 2**stage
        for block in range(blocks):
            shapes += [
                (planes, inplanes, 1, 1), (planes,), (planes,),
                (planes, planes, 3, 3), (planes,), (planes,),
                (planes * 4, planes, 1, 1), (planes * 4,), (planes * 4,),
            ]
            if block == 0:
                shapes += [(planes * 4, inplanes, 1, 1), (planes * 4,), (planes * 4,)]
            inplanes = planes * 4
    shapes += [(num_classes, inplanes), (num_classes,)]
    return shapes


def gpt2_shapes(n_embd=768, n_layer=12, vocab=50257, n_ctx=1024):
    """Parameter shapes of GPT-2 small with the LM head tied to the token embedding (Hugging Face
    layout: Conv1D weights are (in, out)). Defaults: 148 tensors, 124,439,808 elements."""
    shapes = [(vocab, n_embd), (n_ctx, n_embd)]
    for _ in range(n_layer):
        shapes += [
            (n_embd,), (n_embd,),                       # ln_1
            (n_embd, 3 * n_embd), (3 * n_embd,),        # attn.c_attn
            (n_embd, n_embd), (n_embd,),                # attn.c_proj
            (n_embd,), (n_embd,),                       # ln_2
            (n_embd, 4 * n_embd), (4 * n_embd,),        # mlp.c_fc
            (4 * n_embd, n_embd), (n_embd,),            # mlp.c_proj
        ]
    shapes += [(n_embd,), (n_embd,)]                    # ln_f
    return shapes


def many_small_shapes(count, smallest, largest, seed=0):
    """``count`` 1-D sizes spread log-uniformly over [smallest, largest], the same on every run."""
    rng = random.Random(seed)
    low, high = math.log(smallest), math.log(largest)
    return [(int(round(math.exp(rng.uniform(low, high)))),) for _ in range(count)]


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    description: str
    #: (device_type, quick) -> list of shapes
    shapes: Callable[[str, bool], list]
    #: device types whose default run includes it
    default_on: Tuple[str, ...] = ("cpu", "cuda")


def _large(device_type, quick):
    if quick:
        return [(1 << 16,)]
    return [(1 << 28,)] if device_type == "cuda" else [(1 << 24,)]


WORKLOADS = {
    w.name: w
    for w in [
        Workload("large", "one large tensor (2^24 elements on CPU, 2^28 on CUDA)", _large),
        Workload(
            "small", "2,000 small tensors of 64 to 4,096 elements",
            lambda device_type, quick: many_small_shapes(100, 4, 256) if quick else many_small_shapes(2000, 64, 4096),
        ),
        Workload(
            "resnet50", "ResNet-50 parameter shapes (161 tensors, 25.6M elements)",
            lambda device_type, quick: resnet50_shapes(width=4, num_classes=10) if quick else resnet50_shapes(),
        ),
        Workload(
            "gpt2", "GPT-2 small parameter shapes, tied embeddings (148 tensors, 124.4M elements)",
            lambda device_type, quick: gpt2_shapes(n_embd=32, vocab=500, n_ctx=64) if quick else gpt2_shapes(),
        ),
        Workload(
            "1b", "1B parameters as four tensors of 250M (CUDA default only: 16 GB per optimizer copy in float32)",
            lambda device_type, quick: [(4096,)] * 4 if quick else [(250_000_000,)] * 4,
            default_on=("cuda",),
        ),
        Workload(
            "mixed", "500 tensors of 4,096 and 500 of 64 elements (weights and biases)",
            lambda device_type, quick: [(256,)] * 20 + [(8,)] * 20 if quick else [(4096,)] * 500 + [(64,)] * 500,
        ),
        Workload(
            "tiny", "1,000 tensors of 64 elements: the step's fixed costs",
            lambda device_type, quick: [(8,)] * 50 if quick else [(64,)] * 1000,
            default_on=(),
        ),
        Workload(
            "ln-1024", "LayerNorm input, hidden size 1024 (4096 rows on CPU, 32768 on CUDA)",
            lambda device_type, quick: [(64, 128)] if quick else [(4096 if device_type == "cpu" else 32768, 1024)],
        ),
        Workload(
            "ln-8192", "LayerNorm input, hidden size 8192 (1024 rows on CPU, 4096 on CUDA)",
            lambda device_type, quick: [(16, 1000)] if quick else [(1024 if device_type == "cpu" else 4096, 8192)],
        ),
        Workload(
            "ln-16384", "LayerNorm input, hidden size 16384, 2048 rows (CUDA default only)",
            lambda device_type, quick: [(8, 4097)] if quick else [(2048, 16384)],
            default_on=("cuda",),
        ),
        Workload(
            "resnet-bn", "BatchNorm2d input of a ResNet stage: (32, 64, 56, 56) on CPU, (128, 256, 56, 56) on CUDA",
            lambda device_type, quick: [(4, 8, 7, 7)] if quick else [
                (32, 64, 56, 56) if device_type == "cpu" else (128, 256, 56, 56)],
        ),
    ]
}


def numel(shapes):
    return sum(math.prod(s) for s in shapes)
