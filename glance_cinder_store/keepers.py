"""Page-cache keepers: an open descriptor on each warm device, per process.

Linux drops a block device's page cache when the device's last descriptor
is closed.  Between two downloads nobody reads the device, so without a
descriptor kept open every download of a warm image read the device again.
A process that reads a volume keeps one read-only descriptor on its device
(a keeper) for as long as it holds or keeps the attachment warm; later
downloads, in any process of the host, then read from memory.

A keeper must never hold up a detach: os-brick refuses to flush a
multipath map in use, and a device should not outlive its attachment.  So
before a device is disconnected, the detaching process asks every process
of the host that keeps it to let go, and waits for them (bounded).  Each
keeping process listens on a FIFO named after its pid in
``<state dir>/keepers``; a request is the volume id, one per line.  A
process that dies closes its descriptors with it; its FIFO then has no
reader and is removed by the next process that finds it so.

A keeper also fills the page cache once the first (direct) read of its
attachment is done: a thread reads the image through the kept descriptor
at low priority and pausing while anyone reads the volume, so a later
download reads memory instead of paying for the fill itself.  Letting go
stops the fill first.
"""

import atexit
import logging
import os
import stat
import threading
import time

from glance_cinder_store import holders

LOG = logging.getLogger(__name__)

#: How long a detach waits for other processes to close their keepers.
LET_GO_TIMEOUT = 5.0
#: How long to wait for a process whose descriptors we cannot list.
UNSEEN_GRACE = 0.2
_POLL = 0.005
#: Bytes a fill reads per call: how long letting go waits for it at most.
FILL_CHUNK = 4 * 1024 * 1024
#: Niceness of a filling thread: requests come first.
FILL_NICE = 10
#: How often a fill that yields to readers looks again.
FILL_YIELD = 0.05
_shared = {}                    # real state dir -> Keepers
_shared_lock = threading.Lock()


def for_state_dir(state_dir, on_request=None):
    """The process's one Keepers of ``state_dir``.

    Every store of a process that shares a state dir must share it: the
    FIFO is named after the process, so a second listener would take the
    first one's requests.
    """
    key = os.path.realpath(state_dir)
    with _shared_lock:
        keepers = _shared.get(key)
        if keepers is None:
            keepers = _shared[key] = Keepers(state_dir)
    if on_request is not None:
        keepers.on_request.append(on_request)
    return keepers


class _Kept:
    """One kept device: its descriptor and, while it runs, its fill."""

    def __init__(self, fd):
        self.fd = fd
        self.filling = None         # the fill's thread, once started
        self.stop = threading.Event()
        self.reading = threading.Event()   # set when the fill stops reading

    def close(self):
        self.stop.set()
        if self.filling is not None:
            # at most one FILL_CHUNK read; not the whole thread: its done()
            # takes the volume's lock, which our caller may hold
            self.reading.wait()
        os.close(self.fd)


class Keepers:
    """This process's keepers, and the asking of other processes' keepers.

    ``on_request`` holds ``callback(volume_id)``s, called when another
    process asked us to let go (each store's warm cache forgets the volume).
    """

    def __init__(self, state_dir):
        self.dir = os.path.join(state_dir, 'keepers')
        self.enabled = True
        self.on_request = []
        self._kept = {}             # volume id -> _Kept
        self._lock = threading.Lock()
        self._pid = None
        self._listening = False

    # -- this process's keepers -------------------------------------------

    def keep(self, volume_id, path):
        """Hold ``path`` open for ``volume_id`` (once per process)."""
        if not self.enabled:
            return
        with self._lock:
            self._forget_parent()
            if volume_id in self._kept:
                return
            if not self._listen():
                return
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                LOG.debug('volume %s: cannot keep %s open (%s)',
                          volume_id, path, e)
                return
            self._kept[volume_id] = _Kept(fd)

    def holds(self, volume_id):
        with self._lock:
            self._forget_parent()
            return volume_id in self._kept

    def fill(self, volume_id, size, busy=None, done=None):
        """Read ``size`` bytes of the kept device into the page cache.

        In a thread of its own, once per keeper; returns at once.  While
        ``busy()`` is true (someone reads the volume) the fill waits: a
        reader that finds the fill not done reads direct, at full speed,
        rather than compete with it.  ``done()`` is called when the whole
        image has been read (not when the fill is stopped).
        """
        with self._lock:
            self._forget_parent()
            kept = self._kept.get(volume_id)
            if kept is None or kept.filling is not None:
                return
            kept.filling = threading.Thread(
                target=_fill, args=(volume_id, kept, size, busy, done),
                name='gcs-fill-%s' % volume_id[:8], daemon=True)
            kept.filling.start()

    def drop(self, volume_id):
        """Close this process's keeper of ``volume_id``, if any."""
        with self._lock:
            self._forget_parent()
            kept = self._kept.pop(volume_id, None)
        if kept is not None:
            kept.close()

    def _forget_parent(self):
        # A forked child inherits the parent's descriptors but not its
        # listener: close them, or a detach would never hear from them.
        if self._pid != os.getpid():
            if self._pid is not None:
                for kept in self._kept.values():
                    try:
                        os.close(kept.fd)   # no fill runs in a child
                    except OSError:
                        pass
                self._kept.clear()
                self._listening = False
            self._pid = os.getpid()

    # -- being asked ------------------------------------------------------

    def _fifo(self, pid):
        return os.path.join(self.dir, str(pid))

    def _listen(self):
        """Start the listener thread (under self._lock); False if we can't."""
        if self._listening:
            return True
        path = self._fifo(os.getpid())
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            try:
                os.unlink(path)     # an earlier process with our pid
            except FileNotFoundError:
                pass
            os.mkfifo(path, 0o600)
            # read-write: the FIFO never reports end of file between
            # writers, and opening it does not wait for one
            fifo = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            LOG.warning('cannot listen for detach requests in %s (%s): '
                        'devices will not be kept open', self.dir, e)
            self.enabled = False
            return False
        threading.Thread(target=self._serve, args=(fifo, os.getpid()),
                         name='gcs-keepers', daemon=True).start()
        atexit.register(_unlink, path, os.getpid())
        self._listening = True
        return True

    def _serve(self, fifo, pid):
        pending = b''
        while os.getpid() == pid:
            try:
                data = os.read(fifo, 4096)
            except InterruptedError:
                continue
            pending += data
            *lines, pending = pending.split(b'\n')
            for line in lines:
                volume_id = line.decode('ascii', 'replace').strip()
                if volume_id:
                    self._serve_one(volume_id)

    def _serve_one(self, volume_id):
        """Another process detaches ``volume_id``: let go of it here."""
        LOG.debug('volume %s: another process detaches it; closing our '
                  'descriptor', volume_id)
        self.drop(volume_id)
        for callback in list(self.on_request):
            try:
                callback(volume_id)
            except Exception:
                LOG.exception('volume %s: forgetting it failed', volume_id)

    # -- asking -----------------------------------------------------------

    def let_go_everywhere(self, volume_id, path, timeout=LET_GO_TIMEOUT):
        """Before ``path`` is disconnected: no keeper on this host holds it.

        Closes ours, asks the other processes that hold it open, and waits
        until they have closed it, at most ``timeout`` seconds.  Returns
        the pids that still hold it (the caller disconnects anyway).
        """
        self.drop(volume_id)
        if not path:
            return []
        asked, unseen = [], []
        for pid in self._other_keepers():
            has = _has_open(pid, path)
            if has is not False and self._ask(pid, volume_id):
                (asked if has else unseen).append(pid)
        if unseen:
            # their descriptors are not ours to see (/proc/<pid>/fd of a
            # process that is not dumpable): give them a moment
            time.sleep(UNSEEN_GRACE)
        deadline = time.monotonic() + timeout
        while asked and time.monotonic() < deadline:
            time.sleep(_POLL)
            asked = [pid for pid in asked if _has_open(pid, path)]
        if asked:
            LOG.warning('volume %s: process(es) %s still have %s open after '
                        '%.0f s; disconnecting anyway', volume_id, asked,
                        path, timeout)
        return asked

    def _other_keepers(self):
        """Pids of the other processes listening here; drops dead ones'."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        pids = []
        for pid in (int(n) for n in names if n.isdigit()):
            if pid == os.getpid():
                continue
            if holders.process_start_time(pid) is None:
                _unlink(self._fifo(pid), None)  # died without cleaning up
            else:
                pids.append(pid)
        return pids

    def _ask(self, pid, volume_id):
        path = self._fifo(pid)
        try:
            if not stat.S_ISFIFO(os.lstat(path).st_mode):
                return False
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False        # nobody listens (a pid reused since)
        try:
            os.write(fd, volume_id.encode('ascii') + b'\n')
            return True
        except OSError as e:
            LOG.warning('cannot ask pid %s to close its descriptor of volume '
                        '%s (%s)', pid, volume_id, e)
            return False
        finally:
            os.close(fd)

    def close(self):
        """Close every keeper of this process (at exit, or in tests)."""
        with self._lock:
            entries = list(self._kept.values()) if self._pid == os.getpid() \
                else []
            self._kept.clear()
        for kept in entries:
            kept.close()


def _fill(volume_id, kept, size, busy, done):
    """Read the device through the page cache until done or stopped."""
    try:
        read = _fill_pages(volume_id, kept, size, busy)
    finally:
        kept.reading.set()
    if read is not None and done is not None and not kept.stop.is_set():
        try:
            done()
        except Exception:
            LOG.exception('volume %s: recording the filled page cache '
                          'failed', volume_id)


def _run_only_when_idle():
    """Let the calling thread run only on CPU time nobody else wants.

    SCHED_IDLE, not just a high nice value: at nice 10 the fills of eight
    new images still took a share of two cores from the uploads running
    beside them.  Best effort: a thread's own scheduling.
    """
    me = threading.get_native_id()
    try:
        os.sched_setscheduler(me, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        try:
            os.setpriority(os.PRIO_PROCESS, me, FILL_NICE)
        except OSError:
            pass


def _fill_pages(volume_id, kept, size, busy):
    """Bytes read, None if a read failed; stops early when asked."""
    _run_only_when_idle()
    buf = bytearray(FILL_CHUNK)
    offset = 0
    started = time.monotonic()
    try:
        while offset < size and not kept.stop.is_set():
            if busy is not None and _asks_to_wait(busy, volume_id):
                kept.stop.wait(FILL_YIELD)
                continue
            got = os.preadv(kept.fd, [buf], offset)
            if not got:
                break
            offset += got
    except OSError as e:
        LOG.debug('volume %s: filling the page cache stopped (%s)',
                  volume_id, e)
        return None
    LOG.debug('volume %s: %d bytes in the page cache in %.2f s%s',
              volume_id, offset, time.monotonic() - started,
              ' (stopped)' if kept.stop.is_set() else '')
    return offset


def _asks_to_wait(busy, volume_id):
    try:
        return busy()
    except Exception as e:
        LOG.debug('volume %s: cannot tell whether it is read (%s); '
                  'filling on', volume_id, e)
        return False


def _has_open(pid, path):
    """Whether process ``pid`` has ``path`` open; None if we cannot tell."""
    fd_dir = '/proc/%d/fd' % pid
    try:
        fds = os.listdir(fd_dir)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    real = os.path.realpath(path)
    for fd in fds:
        try:
            if os.readlink(os.path.join(fd_dir, fd)) == real:
                return True
        except OSError:
            continue
    return False


def _unlink(path, only_in_pid):
    if only_in_pid is not None and only_in_pid != os.getpid():
        return
    try:
        os.unlink(path)
    except OSError:
        pass
