"""Which parameters of a model a name pattern refers to (shared by the regularizer and the loss
landscape)."""


def matches(name, module, patterns):
    """True when a pattern is a substring of the parameter's qualified name or of its module's class
    name (both lowercased): "bias" matches every bias, "norm" every parameter of a BatchNorm,
    LayerNorm or GroupNorm however the module is named."""
    name, cls = name.lower(), type(module).__name__.lower()
    return any(p.lower() in name or p.lower() in cls for p in patterns)


def owners(model):
    """(qualified name, parameter, owning module) for each parameter of ``model``, in the order of
    ``model.parameters()``."""
    modules = dict(model.named_modules(remove_duplicate=False))
    result = []
    for name, p in model.named_parameters():
        module_name = name.rpartition(".")[0]
        result.append((name, p, modules[module_name]))
    return result


def check_patterns(patterns, what):
    if isinstance(patterns, str):
        patterns = (patterns,)
    patterns = tuple(patterns or ())
    if not all(isinstance(p, str) and p for p in patterns):
        raise TypeError(f"{what} must be a sequence of non-empty strings, got {patterns!r}")
    return patterns
