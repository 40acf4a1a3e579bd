"""argparse value types and checks shared by the ``fused-optim`` subcommands: each turns a bad value
into argparse's own error (exit status 2) before anything runs."""

import argparse
import math
import os


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {text!r}")
    return value


def positive_number(unit=""):
    """A type for finite positive floats; ``unit`` ("seconds") names what the number counts."""
    what = f"a number of {unit}" if unit else "a number"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {what[2:]}, got {text!r}")
        return value

    return parse


def output_path(path, option, parser):
    """``path`` when a file can be written there (its folder exists, it is not a folder), else a
    parser error naming ``option``; None stays None."""
    if path is None:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        parser.error(f"{option} {path}: the folder {directory} does not exist")
    if os.path.isdir(path):
        parser.error(f"{option} {path}: is a folder; give a file name")
    return path
