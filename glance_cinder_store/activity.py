"""Whether this host is uploading or downloading images right now.

Background work (warming up a new image, filling a page cache) waits while
any glance-api process of the host transfers an image: on a small host it
would take the CPU, and the Cinder time, that the transfer needs.

Each transfer holds a shared ``flock`` on ``<state dir>/activity``; the host
is busy while anyone does, which a non-blocking exclusive lock attempt tells
without a registry to clean up: the kernel drops a dead process's locks.
"""

import contextlib
import fcntl
import os
import time


class HostActivity:
    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, 'activity')

    def _open(self):
        return os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC,
                       0o640)

    @contextlib.contextmanager
    def running(self):
        """Count the block as a transfer of this host."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def busy(self):
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def wait_quiet(self, quiet, timeout, poll=0.1):
        """True once nothing was transferred for ``quiet`` seconds.

        glance-api workers serve one request after the other: between two
        uploads of a burst the host is idle for a moment only.
        """
        deadline = time.monotonic() + timeout
        since = None
        while True:
            now = time.monotonic()
            if self.busy():
                since = None
            elif since is None:
                since = now
            if since is not None and now - since >= quiet:
                return True
            if now >= deadline:
                return False
            time.sleep(poll)
