"""The ceilings: a loop device of Cinder's backend, and the two hashes.

Device: a sparse file beside Cinder's volume files, bound to a loop device
exactly as tools/cinder_loop does it (``losetup --direct-io=on``), written
and read like ``dd bs=4M`` in four ways: O_DIRECT, and buffered with
fdatasync (what the drivers do: write the page cache, flush at the end);
reads with O_DIRECT and buffered after dropping the caches.  The data is
random (a backend or a virtual disk may treat zeros specially).

Hashes: md5 + sha512 one after the other in one thread (the built-in
driver's way), and md5 and sha512 in two threads (hashlib releases the GIL
for large buffers: the ceiling for an upload on two cores).
"""

import hashlib
import mmap
import os
import subprocess
import threading
import time
import uuid

from bench_lib import common
from bench_lib.common import BLOCK
from bench_lib.common import log
from bench_lib.common import MB


def _run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True,
                          text=True).stdout.strip()


def drop_caches():
    os.sync()
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3\n')
        return True
    except OSError:
        return False


class LoopDevice:
    """A sparse file in Cinder's loop folder bound to /dev/loopN."""

    def __init__(self, size):
        self.size = size
        self.path = os.path.join(common.LOOP_DIR, 'gcs-bench-%d-%s.img' % (
            os.getpid(), uuid.uuid4().hex[:8]))
        self.device = None
        self._token = None

    def __enter__(self):
        with open(self.path, 'xb'):
            pass
        self._token = common.on_cleanup('loop file %s' % self.path,
                                        self._undo)
        os.truncate(self.path, self.size)
        self.device = _run('losetup', '--find', '--show', '--direct-io=on',
                           self.path)
        return self

    def _undo(self):
        if self.device:
            subprocess.run(['losetup', '--detach', self.device],
                           capture_output=True)
            self.device = None
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __exit__(self, *exc):
        common.done(self._token)


def _aligned_pool():
    """The random pool copied into page-aligned memory (for O_DIRECT)."""
    pool = common.random_pool()
    buf = mmap.mmap(-1, common.POOL_BLOCKS * BLOCK)
    buf[:] = pool[:common.POOL_BLOCKS * BLOCK]
    return buf


def _write(device, size, direct, buf):
    flags = os.O_WRONLY | (os.O_DIRECT if direct else 0)
    fd = os.open(device, flags)
    view = memoryview(buf)
    try:
        t = time.monotonic()
        pos = 0
        i = 0
        while pos < size:
            slot = (i % common.POOL_BLOCKS) * BLOCK
            n = os.pwrite(fd, view[slot:slot + min(BLOCK, size - pos)], pos)
            pos += n
            i += 1
        if not direct:
            os.fdatasync(fd)
        return size / (time.monotonic() - t) / MB
    finally:
        view.release()
        os.close(fd)


def _read(device, size, direct):
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    fd = os.open(device, flags)
    buf = mmap.mmap(-1, BLOCK)
    view = memoryview(buf)
    try:
        if not direct:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            drop_caches()
        t = time.monotonic()
        pos = 0
        while pos < size:
            n = os.preadv(fd, [view[:min(BLOCK, size - pos)]], pos)
            if n <= 0:
                raise IOError('short read at %d' % pos)
            pos += n
        return size / (time.monotonic() - t) / MB
    finally:
        view.release()
        buf.close()
        os.close(fd)


def device_limits(size):
    """MB/s of write/read on a fresh loop device; one sample of each."""
    buf = _aligned_pool()
    out = {}
    try:
        # each on a fresh sparse file: the drivers write fresh volumes, and
        # the first write of a block allocates it in the backing file
        with LoopDevice(size) as loop:
            out['dd_write_direct_mbps'] = _write(loop.device, size, True, buf)
            out['dd_read_direct_mbps'] = _read(loop.device, size, True)
        with LoopDevice(size) as loop:
            out['dd_write_fdatasync_mbps'] = _write(loop.device, size, False,
                                                    buf)
            out['dd_read_cold_mbps'] = _read(loop.device, size, False)
    finally:
        buf.close()
    out['dd_write_mbps'] = max(out['dd_write_direct_mbps'],
                               out['dd_write_fdatasync_mbps'])
    out['dd_read_mbps'] = max(out['dd_read_direct_mbps'],
                              out['dd_read_cold_mbps'])
    return out


def _blocks(size):
    pool = memoryview(common.random_pool())
    n = size // BLOCK
    return [pool[(i % common.POOL_BLOCKS) * BLOCK:
                 (i % common.POOL_BLOCKS + 1) * BLOCK] for i in range(n)]


def hash_limits(size):
    """MB/s of md5+sha512: serial in one thread, and in two threads."""
    blocks = _blocks(size)
    nbytes = len(blocks) * BLOCK
    out = {}

    t = time.monotonic()
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha512()
    for b in blocks:
        md5.update(b)
        sha.update(b)
    out['hash_one_thread_mbps'] = nbytes / (time.monotonic() - t) / MB

    def run(h):
        for b in blocks:
            h.update(b)
    hashers = [hashlib.md5(usedforsecurity=False), hashlib.sha512()]
    threads = [threading.Thread(target=run, args=(h,)) for h in hashers]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out['hash_two_threads_mbps'] = nbytes / (time.monotonic() - t) / MB

    for name, h in (('md5', hashlib.md5(usedforsecurity=False)),
                    ('sha512', hashlib.sha512())):
        t = time.monotonic()
        run(h)
        out['hash_%s_only_mbps' % name] = nbytes / (time.monotonic() - t) / MB
    return out


def memory_first_touch(size=512 * common.MiB):
    """MB/s of touching fresh anonymous memory, then the same pages again.

    On a VM whose host backs guest memory lazily (and takes free pages back,
    virtio-balloon free page reporting) the first touch is slow; every
    buffered write into a fresh page cache pays it.
    """
    buf = mmap.mmap(-1, size)
    try:
        page = mmap.PAGESIZE
        t = time.monotonic()
        for off in range(0, size, page):
            buf[off] = 1
        first = size / (time.monotonic() - t) / MB
        t = time.monotonic()
        for off in range(0, size, page):
            buf[off] = 2
        again = size / (time.monotonic() - t) / MB
    finally:
        buf.close()
    return {'mem_first_touch_mbps': first, 'mem_touch_again_mbps': again}


def run_limits(size):
    log('limits: loop device write/read of %d MiB' % (size // common.MiB))
    out = device_limits(size)
    log('limits: hashes over %d MiB' % (size // common.MiB))
    out.update(hash_limits(size))
    out.update(memory_first_touch())
    log('limits: ' + ', '.join('%s=%.0f' % (k, v)
                               for k, v in sorted(out.items())))
    return out


def engine(size, use_repo_source=True):
    """Our byte engine alone on a bare loop device (no Cinder, no attach).

    transfer.write_image of random and of 75%-zero data, and read_range
    back: what the engine does once the fixed per-image costs are paid.
    """
    import sys
    import warnings
    if use_repo_source and common.REPO not in sys.path:
        sys.path.insert(0, common.REPO)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        from glance_cinder_store import transfer
    out = {}
    for label, zero_fraction in (('random', 0.0), ('sparse', 0.75)):
        with LoopDevice(size) as loop:
            t = time.monotonic()
            res = transfer.write_image(common.DataSource(size, zero_fraction),
                                       loop.device, size, size)
            out['engine_write_%s_mbps' % label] = (
                size / (time.monotonic() - t) / MB)
            out['engine_write_%s_allocated_fraction' % label] = (
                os.stat(loop.path).st_blocks * 512 / size)
            if label == 'random':
                t = time.monotonic()
                n = 0
                for piece in transfer.read_range(loop.device, 0, size):
                    n += len(piece)
                out['engine_read_mbps'] = n / (time.monotonic() - t) / MB
            del res
    log('engine: ' + ', '.join('%s=%.2f' % (k, v)
                               for k, v in sorted(out.items())))
    return out
