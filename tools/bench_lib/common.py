"""Shared pieces of tools/bench: paths, logging, clean-up, test data, stats."""

import atexit
import json
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1000 * 1000          # throughputs are reported in decimal MB/s

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TOOLS)
AIO_ROOT = os.environ.get('AIO_ROOT', '/opt/gcs-aio')
LOOP_DIR = os.path.join(AIO_ROOT, 'data', 'cinder', 'loop')
GLANCE_CONF = os.environ.get('GCS_GLANCE_CONF', '/etc/glance/glance-api.conf')
BLOCK = 4 * MiB

T0 = time.monotonic()


def log(msg):
    """Progress on stderr; the table and JSON are the real output."""
    sys.stderr.write('[%7.1fs] %s\n' % (time.monotonic() - T0, msg))
    sys.stderr.flush()


# --------------------------------------------------------------- clean-up

_cleanups = []
_cleanup_lock = threading.Lock()


def on_cleanup(what, fn):
    """Register ``fn`` to undo something; returns a token for ``done``."""
    token = (what, fn)
    with _cleanup_lock:
        _cleanups.append(token)
    return token


def done(token, run=True):
    """Undo (``run``) or forget one registered clean-up."""
    with _cleanup_lock:
        try:
            _cleanups.remove(token)
        except ValueError:
            return
    if run:
        _run_one(token)


def _run_one(token):
    what, fn = token
    try:
        fn()
    except Exception as e:      # keep going: undo as much as we can
        log('clean-up of %s failed: %s' % (what, e))


def run_cleanups():
    while True:
        with _cleanup_lock:
            if not _cleanups:
                return
            token = _cleanups.pop()
        log('cleaning up %s' % token[0])
        _run_one(token)


def _on_signal(signum, frame):
    raise KeyboardInterrupt('signal %d' % signum)


def install_cleanup_handlers():
    atexit.register(run_cleanups)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


# -------------------------------------------------------------- test data

_POOL = None
_POOL_LOCK = threading.Lock()
POOL_BLOCKS = 16                      # 64 MiB of distinct random blocks
_ZERO_BLOCK = bytes(BLOCK)


def random_pool():
    """68 MiB of random bytes, made once per process (about 0.3 s)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = random.Random(20240611).randbytes(
                (POOL_BLOCKS + 1) * BLOCK)
        return _POOL


def block_is_zero(index, zero_fraction):
    """Deterministic pattern: in each group of 4 blocks, 3 are zeros (75%)."""
    if not zero_fraction:
        return False
    group, pos = divmod(index, 4)
    data_pos = (group * 2654435761 >> 5) % 4      # varies per group
    if zero_fraction >= 0.75:
        return pos != data_pos
    # other fractions: a seeded coin per block
    return random.Random(index).random() < zero_fraction


def block_bytes(index, zero_fraction=0.0):
    """The content of block ``index`` (BLOCK bytes) as a new bytes object.

    Random blocks are slices of the pool at an offset that moves with a
    counter (index // 16), so no two blocks of an image are equal, yet making
    one costs only a memcpy (~20 GB/s here).  Zero blocks share one object.
    """
    if block_is_zero(index, zero_fraction):
        return _ZERO_BLOCK
    pool = random_pool()
    cycle, slot = divmod(index, POOL_BLOCKS)
    start = slot * BLOCK + (cycle * 4104) % BLOCK
    return pool[start:start + BLOCK]


class DataSource:
    """A file-like image of ``size`` bytes made of 4 MiB blocks.

    ``read(n)`` returns at most ``n`` bytes and never crosses a block
    boundary (a short read, as a socket gives); a whole aligned block is
    returned as is, without a copy beyond the one making the block.
    """

    def __init__(self, size, zero_fraction=0.0):
        self.size = size
        self.zero_fraction = zero_fraction
        self.pos = 0
        self._index = -1
        self._block = None

    def read(self, n=-1):
        if self.pos >= self.size:
            return b''
        if n is None or n < 0:
            n = self.size - self.pos
        index, within = divmod(self.pos, BLOCK)
        if index != self._index:
            self._index, self._block = index, block_bytes(index,
                                                          self.zero_fraction)
        n = min(n, BLOCK - within, self.size - self.pos)
        self.pos += n
        if within == 0 and n == BLOCK:
            return self._block
        return self._block[within:within + n]

    def tell(self):
        return self.pos

    def __len__(self):
        return self.size

    def __iter__(self):
        while True:
            data = self.read(BLOCK)
            if not data:
                return
            yield data


def source_rate(size=256 * MiB):
    """How fast DataSource produces bytes alone (MB/s), to show it is cheap."""
    src = DataSource(size)
    random_pool()
    t = time.monotonic()
    while src.read(BLOCK):
        pass
    return size / (time.monotonic() - t) / MB


# ------------------------------------------------------------------ stats

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(samples):
    """{'median', 'min', 'max', 'samples'} of numbers (None dropped)."""
    clean = [v for v in samples if v is not None]
    return {'median': median(clean), 'min': min(clean, default=None),
            'max': max(clean, default=None), 'samples': clean}


def rate(nbytes, seconds):
    return nbytes / seconds / MB if seconds else None


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    return None


class PeakRss:
    """Peak resident memory growth of this process over a block (MiB).

    Frees what the allocator holds (gc, malloc_trim) and resets the kernel's
    high-water mark (clear_refs 5) first, so neither earlier garbage nor
    the parent's memory at fork (ru_maxrss keeps it across exec) hides or
    inflates the growth; ``growth`` is VmHWM after minus VmRSS before.
    Falls back to ru_maxrss where clear_refs is refused.
    """

    def __enter__(self):
        import ctypes
        import gc
        gc.collect()
        try:
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            self.exact = True
        except OSError:
            self.exact = False
        self.rss0 = _status_kib('VmRSS') / 1024.0
        self.max0 = maxrss_mib()
        self.growth = None
        return self

    def __exit__(self, *exc):
        if self.exact:
            self.growth = max(0.0, _status_kib('VmHWM') / 1024.0 - self.rss0)
        else:
            self.growth = max(0.0, maxrss_mib() - self.max0)


def allocated_bytes(volume_id):
    """Bytes the backing file of a Cinder volume takes on disk."""
    path = os.path.join(LOOP_DIR, 'volume-%s' % volume_id)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_blocks * 512


# ---------------------------------------------------------------- machine

def machine_info():
    info = {'nproc': os.cpu_count(), 'kernel': platform.release(),
            'python': platform.python_version(),
            'hostname': platform.node()}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    info['cpu_model'] = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemTotal:'):
                    info['memory_gib'] = round(
                        int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        df = os.statvfs(LOOP_DIR)
        info['loop_dir_fs_free_gib'] = round(
            df.f_bavail * df.f_frsize / GiB, 1)
        out = subprocess.run(['findmnt', '-n', '-o', 'SOURCE,FSTYPE', '-T',
                              LOOP_DIR], capture_output=True, text=True)
        info['loop_dir_fs'] = out.stdout.strip()
    except OSError:
        pass
    with open('/proc/loadavg') as f:
        info['loadavg_at_start'] = f.read().split()[:3]
    return info


def cpu_times():
    """(busy, steal, total) jiffies of all CPUs, from /proc/stat."""
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    steal = v[7] if len(v) > 7 else 0
    total = sum(v[:8])
    return total - idle - steal, steal, total


def cpu_share(before, after):
    """Machine-wide busy and steal share of CPU time between two samples."""
    busy, steal, total = (a - b for a, b in zip(after, before))
    if total <= 0:
        return None
    return {'busy_fraction': round(busy / total, 3),
            'steal_fraction': round(steal / total, 3)}


def source_info():
    def git(*args):
        r = subprocess.run(['git', '-C', REPO] + list(args),
                           capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    dirty = git('status', '--porcelain', '--', 'glance_cinder_store')
    return {'repo': REPO, 'head': git('rev-parse', '--short', 'HEAD'),
            'driver_source_modified': bool(dirty),
            'driver_source_diff': (git('diff', 'HEAD', '--',
                                       'glance_cinder_store') or '')[:20000],
            'installed_differs': installed_differs()}


def installed_differs():
    """Installed modules (what glance-api runs) unlike the work tree's."""
    import glob
    import importlib.util
    spec = importlib.util.find_spec('glance_cinder_store')
    if spec is None:
        return None
    work = os.path.join(REPO, 'glance_cinder_store')
    differ = []
    for where in spec.submodule_search_locations or []:
        if os.path.realpath(where) == os.path.realpath(work):
            continue
        for path in glob.glob(os.path.join(where, '**', '*.py'),
                              recursive=True):
            rel = os.path.relpath(path, where)
            try:
                with open(path, 'rb') as a, open(os.path.join(work, rel),
                                                 'rb') as b:
                    if a.read() != b.read():
                        differ.append(rel)
            except OSError:
                differ.append(rel)
    return sorted(differ)


def dump_json(path, data):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write('\n')
    os.replace(tmp, path)
