"""What machine and software a result was produced on: recorded with every bench and check."""

import datetime
import importlib.metadata
import os
import platform
import subprocess
import time

import torch

from .. import _backend, _cpp


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _triton_version():
    try:
        import triton
    except Exception:  # triton is optional off Linux x86-64; its absence is reported, not raised
        return None
    return getattr(triton, "__version__", "unknown")


def _cpuinfo():
    """CPU model, the SIMD extensions the C++ kernels can use and the x86 family/model numbers,
    from /proc/cpuinfo (Linux)."""
    model, flags, ids = platform.processor() or platform.machine(), set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("vendor_id", "cpu family", "model", "stepping"):
                    ids.setdefault(key, value.strip())
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    simd = [name for name in ("avx512f", "avx512_bf16", "avx2", "fma", "neon", "asimd") if name in flags]
    return model, simd, ids, flags


def microarchitecture(ids, flags):
    """A coarse name for AMD's Zen generations from the x86 family number (and AVX-512 to tell
    Zen 4 from Zen 3), which a virtual machine's bare "AMD EPYC" model name hides; None otherwise.
    Speed figures differ between generations (Zen 5 executes 512-bit vectors at full width)."""
    if ids.get("vendor_id") != "AuthenticAMD":
        return None
    try:
        family = int(ids["cpu family"])
    except (KeyError, ValueError):
        return None
    if family == 0x17:
        return "Zen 1/2"
    if family == 0x19:
        return "Zen 4" if "avx512f" in flags else "Zen 3"
    if family == 0x1A:
        return "Zen 5"
    return None


def _parse_size(text):
    """'32768K' / '1M' / '512' (sysfs cache sizes) -> bytes."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def last_level_cache_bytes():
    """The size of the CPU's largest cache (Linux sysfs), or None when unknown."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    sizes = []
    try:
        for entry in os.listdir(root):
            if entry.startswith("index"):
                with open(os.path.join(root, entry, "size")) as f:
                    sizes.append(_parse_size(f.read()))
    except (OSError, ValueError):
        return None
    return max(sizes) if sizes else None


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()


def available_memory(device):
    """Bytes free for new tensors on ``device``, or None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def load_average():
    """The 1, 5 and 15 minute load averages: how busy the machine was (Unix), else None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


class OtherCpuUse:
    """The share of the machine's CPU time that other processes used between start and now.

    From /proc/stat (all CPUs' busy time, hypervisor steal included) minus this process's own
    CPU time, over the elapsed time x usable cores: 0 on an idle machine, 1 when others kept
    every core busy. None where /proc/stat is missing.
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
        busy = (user + nice + system + irq + softirq + steal) / ticks
        own = os.times()
        return time.monotonic(), busy, own.user + own.system

    def share(self):
        now = self._sample()
        if self.start is None or now is None:
            return None
        elapsed = now[0] - self.start[0]
        if elapsed <= 0:
            return None
        other = (now[1] - self.start[1]) - (now[2] - self.start[2])
        return min(1.0, max(0.0, other / (elapsed * usable_cores())))


def _git_commit():
    """The commit of the checkout the package runs from, when it runs from one."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        done = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cuda_devices():
    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append({
            "index": index,
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "l2_cache_bytes": getattr(props, "L2_cache_size", None),
        })
    return devices


def backends_by_device():
    """{backend: {device_type: None (runs) or why not}} for CPU and, where present, CUDA."""
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {b: {d: _backend.unavailable_reason(b, d) for d in device_types} for b in _backend.BACKENDS}


def environment():
    from .. import __version__

    model, simd, ids, flags = _cpuinfo()
    extension = _cpp.get()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fused_optim": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "numpy": _version("numpy"),
        "platform": platform.platform(),
        "cpu": {
            "model": model,
            "family": ids.get("cpu family"),
            "model_number": ids.get("model"),
            "microarchitecture": microarchitecture(ids, flags),
            "logical_cores": os.cpu_count(),
            "usable_cores": usable_cores(),
            "torch_threads": torch.get_num_threads(),
            "simd": simd,
            "last_level_cache_bytes": last_level_cache_bytes(),
            "load_average": load_average(),
        },
        "cuda": {
            "available": torch.cuda.is_available(),
            "torch_cuda_version": torch.version.cuda,
            "devices": cuda_devices(),
        },
        "cpp_extension": {
            "loaded": extension is not None,
            "file": getattr(extension, "__file__", None),
            "reason": _cpp.unavailable_reason(),
        },
        "triton_interpret": _backend.triton_interpret(),
        "backends": backends_by_device(),
    }
