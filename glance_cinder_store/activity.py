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
import logging
import os
import time

LOG = logging.getLogger(__name__)


class HostActivity:
    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, 'activity')
        self._warned = False

    def _open(self, create=True):
        """The lock file, or None: a transfer never fails for its sake.

        Only transfers create it: no file, nobody ever transferred.
        """
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            return os.open(self.path, flags, 0o640)
        except OSError as e:
            if isinstance(e, FileNotFoundError) and not create:
                return None
            if not self._warned:
                self._warned = True
                LOG.warning('cannot open %s (%s): background page-cache '
                            'fills and warm-ups will not wait for the '
                            'transfers of this host', self.path, e)
            return None

    @contextlib.contextmanager
    def running(self):
        """Count the block as a transfer of this host."""
        fd = self._open()
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            if fd is not None:
                os.close(fd)

    def busy(self):
        fd = self._open(create=False)
        if fd is None:
            return False
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
