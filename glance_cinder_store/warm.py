"""The warm cache: idle read-only attachments kept for the next download.

Attaching a volume costs Cinder round trips (~0.2 s) and gives a fresh
device whose page cache is empty.  Keeping the attachment of an image read
in the last few minutes lets the next download start at once, from memory.

This module only decides which idle attachments this process keeps and
when each one goes; attach.py does the detaching, under the volume's lock
and only when the record (holders.py) says nobody holds the attachment.
An attachment goes:

* when it has been idle for ``idle`` seconds (``cinder_plus_attach_grace_
  period``);
* least recently used first, when this process keeps more than ``size``
  idle attachments (``cinder_plus_warm_attachments``);
* at once, when a delete or a writer on this host needs the volume
  (attach.py detaches an idle attachment before anything else);
* within ``check_interval`` seconds (and the age of the host's shared
  answer, ``ReleaseBoard``), when another host asked for the volume (a
  delete there, or a reader of a volume that cannot be attached twice):
  ``released_elsewhere`` tells, at most one Cinder query per check.

Nothing here must survive a crash: the record says since when the
attachment is idle, so the next user of the volume, ``recover`` or the
clean-up tool detaches it once that is too long ago.
"""

import atexit
import collections
import json
import logging
import os
import threading
import time

from glance_cinder_store import holders

LOG = logging.getLogger(__name__)


class WarmCache:
    """Idle read-only attachments of this process, least recently used first.

    Each check for release requests is at most one Cinder query for the
    marked volumes, and every ``LOOK_AT_EACH_EVERY``-th a GET per volume,
    which also finds a volume deleted behind our back.

    :param evict: ``evict(volume_id, volumes, force)`` detaches the volume
        if nobody uses it; ``force`` False keeps it when another process
        left it idle more recently (that one keeps it warm then).
    :param released_elsewhere: ``released_elsewhere(volumes, volume_ids,
        each)`` returns the ids another host asked us to let go of (with
        ``each``, looking at each volume).
    """

    #: every this many checks, each volume is looked at by itself
    LOOK_AT_EACH_EVERY = 12

    def __init__(self, size, idle, check_interval, evict,
                 released_elsewhere=None):
        self.size = size
        self.idle = idle
        self.check_interval = check_interval
        self._evict = evict
        self._released_elsewhere = released_elsewhere
        self._entries = collections.OrderedDict()  # id -> (volumes, since)
        self._volumes = {}          # id -> the volume as Cinder last said
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._pid = None
        self._last_check = 0.0
        self._checks = 0

    @property
    def enabled(self):
        return self.size > 0 and self.idle > 0

    def __len__(self):
        return len(self._entries)

    def __contains__(self, volume_id):
        return volume_id in self._entries

    # -- hooks for attach.py ---------------------------------------------

    def keep(self, volume_id, volumes, volume=None):
        """The last reader left ``volume_id``: keep it warm for a while."""
        with self._lock:
            self._forget_parent()
            self._entries.pop(volume_id, None)
            self._entries[volume_id] = (volumes, time.monotonic())
            self._volumes[volume_id] = volume
            over = len(self._entries) > self.size
            self._start()
        if over:
            self._wake.set()

    def take(self, volume_id):
        """A reader joined ``volume_id``: it is in use, not idle."""
        with self._lock:
            self._entries.pop(volume_id, None)
            self._volumes.pop(volume_id, None)

    forget = take

    def volume(self, volume_id):
        """The volume of a warm attachment of this process, or None.

        While we hold an attachment, Cinder lets nobody delete, extend or
        re-type the volume, so a reader may trust this copy instead of
        asking Cinder again.
        """
        with self._lock:
            return self._volumes.get(volume_id)

    # -- the sweeper ---------------------------------------------------------

    def _forget_parent(self):
        """After a fork, the parent's entries and thread are not ours."""
        if self._pid != os.getpid():
            if self._pid is not None:
                self._entries.clear()
                self._volumes.clear()
            self._pid = os.getpid()
            self._thread = None

    def _start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name='gcs-warm-cache')
            self._thread.start()
            atexit.register(self.close)

    def _run(self):
        while True:
            self._wake.wait(self._next_wakeup())
            self._wake.clear()
            try:
                self.sweep()
            except Exception:
                LOG.exception('warm attachment cache: sweep failed; will '
                              'retry')

    def _next_wakeup(self):
        with self._lock:
            if not self._entries:
                return self.check_interval
            oldest = next(iter(self._entries.values()))[1]
        due = oldest + self.idle - time.monotonic() + 0.01
        return max(0.01, min(due, self.check_interval))

    def due(self, now=None):
        """(expired ids, ids beyond the size bound, least recent first)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            ids = list(self._entries)
            expired = [v for v in ids
                       if now - self._entries[v][1] >= self.idle]
            rest = [v for v in ids if v not in expired]
            surplus = rest[:max(0, len(rest) - self.size)]
        return expired, surplus

    def sweep(self, now=None):
        """Let go of what is expired, surplus, or wanted by another host."""
        expired, surplus = self.due(now)
        for volume_id in expired:
            self._let_go(volume_id, force=False, why='idle')
        for volume_id in surplus:
            self._let_go(volume_id, force=True, why='least recently used')
        for volume_id in self._wanted_elsewhere(now):
            self._let_go(volume_id, force=True, why='wanted elsewhere')

    def _wanted_elsewhere(self, now=None):
        now = time.monotonic() if now is None else now
        if (self._released_elsewhere is None or
                now - self._last_check < self.check_interval):
            return []
        self._last_check = now
        self._checks += 1
        each = self._checks % self.LOOK_AT_EACH_EVERY == 0
        wanted = []
        for volumes, ids in self._by_credentials():
            try:
                wanted.extend(self._released_elsewhere(volumes, ids, each))
            except Exception as e:
                LOG.warning('warm attachment cache: cannot ask Cinder '
                            'whether another host needs %s: %s', ids, e)
        return wanted

    def _by_credentials(self):
        """[(volumes, ids)]: one question to Cinder per set of credentials.

        The store's own credentials (``as_service``) answer for every
        volume; a user's answer only for the volumes that user read.
        """
        groups = {}
        with self._lock:
            for volume_id, (volumes, _) in self._entries.items():
                key = ('service' if getattr(volumes, 'as_service', False)
                       else id(volumes))
                groups.setdefault(key, (volumes, []))[1].append(volume_id)
        return list(groups.values())

    def _let_go(self, volume_id, force, why):
        with self._lock:
            entry = self._entries.pop(volume_id, None)
            if entry is not None:
                self._volumes.pop(volume_id, None)
        if entry is None:
            return
        LOG.debug('volume %s: letting go of the idle attachment (%s)',
                  volume_id, why)
        try:
            self._evict(volume_id, entry[0], force)
        except Exception:
            LOG.exception('volume %s: detaching an idle attachment failed; '
                          'the next user of the volume or the clean-up '
                          'tool will finish it', volume_id)

    def close(self):
        """At exit: nobody in this process will come back for them."""
        with self._lock:
            ids = list(self._entries) if self._pid == os.getpid() else []
        for volume_id in ids:
            self._let_go(volume_id, force=True, why='process exit')


class WarmUps:
    """New images to warm up, one at a time, once the host is quiet.

    One thread per process, not one per upload: under a steady stream of
    uploads the host is never quiet, and only the newest ``size`` images
    are worth it (the warm cache keeps no more).  An image that waited
    longer than ``max_age`` is dropped: it would have left the cache by now.

    :param wait_quiet: ``wait_quiet(timeout)`` returns True once the host
        has had no transfer for a while.
    :param warm_up: ``warm_up(volume_id, size)`` attaches and fills.
    """

    def __init__(self, size, max_age, wait_quiet, warm_up):
        self.size = size
        self.max_age = max_age
        self._wait_quiet = wait_quiet
        self._warm_up = warm_up
        self._pending = collections.OrderedDict()  # id -> (size, since)
        self._changed = threading.Condition()
        self._thread = None
        self._pid = None
        self._working = False

    def __len__(self):
        return len(self._pending)

    def wait_done(self, timeout):
        """True once nothing is pending or being warmed up."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._pending and not self._working, timeout)

    def add(self, volume_id, size):
        with self._changed:
            if self._pid != os.getpid():    # forked: not the parent's
                self._pending.clear()
                self._pid = os.getpid()
                self._thread = None
            self._pending.pop(volume_id, None)
            self._pending[volume_id] = (size, time.monotonic())
            while len(self._pending) > self.size:
                self._pending.popitem(last=False)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name='gcs-warm-up')
                self._thread.start()
            self._changed.notify()

    def next(self, now=None):
        """The newest image still worth warming up, or None."""
        now = time.monotonic() if now is None else now
        with self._changed:
            while self._pending:
                volume_id, (size, since) = self._pending.popitem(last=True)
                if now - since < self.max_age:
                    return volume_id, size
        return None

    def _run(self):
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending)
            if not self._wait_quiet(self.max_age):
                continue
            with self._changed:
                item = self.next()
                self._working = item is not None
            try:
                if item is not None:
                    self._warm_up(*item)
            except Exception:
                LOG.exception('volume %s: warming up failed', item[0])
            finally:
                with self._changed:
                    self._working = False
                    self._changed.notify_all()


class ReleaseBoard:
    """Cinder's last answer on release marks, shared by a host's processes.

    Every glance-api process keeping idle attachments asks each check
    interval whether another host wants one of them.  One query per process
    and store made cinder-api answer (and log) workers x stores queries per
    interval per host; through the board the first process to find the
    answer older than ``max_age`` asks, holding the board's host-wide lock
    (in ``lock_path``, beside the volumes' locks), and the others read its
    answer.  Readers wait at most the query's time; a board that cannot be
    read or written just means asking Cinder.
    """

    def __init__(self, path, max_age, lock_path):
        self.path = path
        self.max_age = max_age
        self.lock_path = lock_path

    def marked(self, ask):
        """Ids of the marked volumes: from the board if fresh, else ``ask()``.

        ``ask()`` returns a set of ids, or None when Cinder will not say
        (then nothing is written and None is returned).
        """
        with holders.host_lock(os.path.basename(self.path), self.lock_path):
            now = time.time()
            board = self._read()
            if board is not None and 0 <= now - board['at'] < self.max_age:
                return set(board['ids'])
            ids = ask()
            if ids is not None:
                self._write({'at': now, 'ids': sorted(ids)})
            return ids

    def _read(self):
        try:
            with open(self.path) as f:
                board = json.load(f)
            return {'at': float(board['at']), 'ids': list(board['ids'])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write(self, board):
        tmp = '%s.%d.tmp' % (self.path, os.getpid())
        try:
            with open(tmp, 'w') as f:
                json.dump(board, f)
            os.replace(tmp, self.path)
        except OSError as e:
            LOG.debug('release board %s: not written (%s)', self.path, e)
