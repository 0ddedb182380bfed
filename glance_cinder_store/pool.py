"""The volume pool: empty volumes created ahead of time for small adds.

Creating a volume and waiting for Cinder to make it available is about
0.3 s of the 0.5 s a 1 MiB upload costs, and attaching it another 0.12 s.
With ``cinder_plus_volume_pool_size`` > 0, each process that configures the
store keeps that many empty 1 GiB volumes of the store's type ready, each
already attached read-write to this host by the process (an ordinary
holder in the host's attachment records).  An add of at most 1 GiB (or of
unknown size) claims one without a Cinder call, writes through the
attachment the pool made, and renames the volume ``image-<id>`` with its
final metadata in the one update it makes anyway; a background thread then
creates and attaches the replacement once the host is quiet.

A pool volume never leaks:

* it carries, from its create on, the upload mark of the process keeping
  it (holders.UploadMark) and ``glance_cinder_store_pool``, so the
  self-healing pass and ``glance-cinder-store-cleanup`` judge it exactly
  like an upload: deleted once its process is gone (another host's, once
  its heartbeat is older than ``cinder_plus_upload_stale_after``); the pool
  refreshes the marks every ``cinder_plus_upload_heartbeat_interval``;
* the process deletes its pool at exit and when the store is closed;
* it has no ``glance_image_id``: the store refuses to read or delete it
  through Glance.
"""

import atexit
import contextlib
import dataclasses
import logging
import os
import threading
import time
import uuid

from glance_cinder_store import holders

LOG = logging.getLogger(__name__)

#: Volume metadata key of a pool volume: the store it was made for.
POOL_MARK = 'glance_cinder_store_pool'
#: Size of a pool volume: what an add of up to 1 GiB creates anyway.
VOLUME_GB = 1
#: Longest wait between two refill attempts after failures (quota...).
MAX_BACKOFF = 60.0
#: A refill waits until the host has transferred no image for this long,
#: at most REFILL_WAIT_MAX: a burst of uploads draws the pool down and the
#: quiet after it fills it again, rather than the refill's Cinder calls
#: (create, attach: about 0.2 s of Cinder's CPU each) competing with the
#: burst for the host.
REFILL_QUIET = 1.0
REFILL_WAIT_MAX = 10.0


def is_pool_volume(volume):
    return POOL_MARK in (getattr(volume, 'metadata', None) or {})


@dataclasses.dataclass
class Ready:
    """A pool volume, and the read-write attachment the pool holds on it.

    ``holding`` exits to let the attachment go (the claiming add does that
    once it has written); ``attached`` is None when the pool does not
    attach ahead of time.
    """
    volume: object
    mark: holders.UploadMark
    holding: contextlib.ExitStack = None
    attached: object = None
    on_release: object = None

    def release(self):
        """Let go of the attachment (before the volume can be deleted)."""
        holding, self.holding, self.attached = self.holding, None, None
        on_release, self.on_release = self.on_release, None
        try:
            if holding is not None:
                holding.close()
        finally:
            if on_release is not None:
                on_release()


class VolumePool:
    """Ready volumes of one store in this process.

    :param volumes: a callable returning the store's Cinder calls
        (``cinder.Volumes`` with the service credentials).
    :param attachments: the host's ``attach.HostAttachments`` to attach
        ready volumes ahead of time, or None.
    """

    def __init__(self, store_name, volume_type, volumes, size,
                 heartbeat_interval, attachments=None):
        self.store_name = store_name
        self.volume_type = volume_type
        self._volumes = volumes
        self._attachments = attachments
        self.size = size
        self.heartbeat_interval = heartbeat_interval
        self._ready = []            # Ready entries, oldest first
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = None
        self._pid = os.getpid()

    def __len__(self):
        return len(self._ready)

    def start(self):
        """Fill the pool in a daemon thread; deleted at exit."""
        if self.size > 0 and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, daemon=True,
                name='gcs-volume-pool-%s' % self.store_name)
            self._thread.start()
            atexit.register(self.close)
        return self

    # -- claiming -----------------------------------------------------------

    def claim(self, size_gb):
        """A ``Ready`` volume for an add of ``size_gb`` GiB, or None.

        No Cinder call: the volume keeps its pool name and marks while the
        add writes (a crash then leaves a pool volume of a dead process,
        which the self-healing pass deletes) and the add renames it with
        its final metadata at the end.  The caller owns the entry and must
        ``release`` it when done writing; the pool refills then, so the
        refill does not compete with the add for Cinder.
        """
        if size_gb != VOLUME_GB or self._pid != os.getpid():
            return None
        with self._lock:
            entry = self._ready.pop(0) if self._ready else None
        if entry is None:
            self._wake.set()
            return None
        entry.on_release = self._wake.set
        LOG.debug('store %s: claimed pool volume %s', self.store_name,
                  entry.volume.id)
        return entry

    # -- the refill thread --------------------------------------------------

    def _run(self):
        backoff = 1.0
        while not self._closed.is_set():
            try:
                while self._wanted() and not self._closed.is_set():
                    self._wait_for_quiet()
                    if not self._closed.is_set():
                        self._add_one()
                backoff = 1.0
                timeout = self.heartbeat_interval or None
            except Exception as e:
                LOG.warning('store %s: could not refill the volume pool '
                            '(%s); retrying in %.0fs', self.store_name, e,
                            backoff)
                timeout, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
            if self._wake.wait(timeout):
                self._wake.clear()
            elif self.heartbeat_interval and not self._closed.is_set():
                self._refresh_marks()
        self._drain()

    def _wait_for_quiet(self):
        if self._attachments is None:
            return
        activity = self._attachments.activity
        deadline = time.monotonic() + REFILL_WAIT_MAX
        while not self._closed.is_set() and time.monotonic() < deadline:
            if activity.wait_quiet(REFILL_QUIET, REFILL_QUIET + 0.5):
                return

    def _wanted(self):
        with self._lock:
            return len(self._ready) < self.size

    def _add_one(self):
        volumes = self._volumes()
        mark = holders.UploadMark.mine()
        name = 'glance-cinder-store-pool-%s-%s' % (self.store_name,
                                                   uuid.uuid4().hex[:8])
        volume = volumes.create(VOLUME_GB, name, dict(
            mark.metadata(), **{POOL_MARK: self.store_name}),
            self.volume_type)
        entry = Ready(volume, mark)
        try:
            entry.volume = volumes.wait_for(volume, 'available',
                                            ('creating',))
            self._attach(volumes, entry)
        except BaseException:
            self._delete(volumes, entry)
            raise
        with self._lock:
            if not self._closed.is_set():
                self._ready.append(entry)
                return
        self._delete(volumes, entry)

    def _attach(self, volumes, entry):
        """Attach the ready volume read-write, held until claimed.

        Offered only once Cinder has taken the attachment's "complete":
        waiting costs no upload anything here, a pool volume is in-use as
        Cinder shows it, and a refused complete is found before a claim.
        """
        if self._attachments is None:
            return
        with contextlib.ExitStack() as holding:
            attached = holding.enter_context(
                self._attachments.attach(volumes, entry.volume, 'rw'))
            attached.wait_completed()
            entry.attached, entry.holding = attached, holding.pop_all()

    def _refresh_marks(self):
        """Keep the heartbeat of every ready volume's mark fresh."""
        volumes = self._volumes()
        with self._lock:
            ids = [e.volume.id for e in self._ready]
        for volume_id in ids:
            # under the lock: a claim never races a refresh of its volume
            with self._lock:
                entry = next((e for e in self._ready
                              if e.volume.id == volume_id), None)
                if entry is None:
                    continue
                mark = entry.mark.refreshed()
                try:
                    volumes.set_metadata(entry.volume,
                                         {holders.UPLOAD_MARK: mark.format()})
                except Exception as e:
                    LOG.warning('store %s: could not refresh the mark of '
                                'pool volume %s: %s', self.store_name,
                                volume_id, e)
                    continue
                entry.mark = mark

    # -- closing ------------------------------------------------------------

    def close(self):
        """Delete the ready volumes and stop refilling (at exit, too)."""
        self._closed.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self._drain()

    def _drain(self):
        if self._pid != os.getpid():
            return      # a forked child: the volumes are the parent's
        with self._lock:
            entries, self._ready = self._ready, []
        if not entries:
            return
        volumes = self._volumes()
        for entry in entries:
            self._delete(volumes, entry)

    def _delete(self, volumes, entry):
        """Detach (if the pool attached it) and delete a pool volume."""
        try:
            entry.release()
            volumes.delete(entry.volume.id)
        except Exception as e:
            LOG.warning('store %s: could not delete pool volume %s (%s); '
                        'the self-healing pass deletes it once this process '
                        'is gone', self.store_name, entry.volume.id, e)
