"""Host attachments: one context manager that attaches a volume and undoes it.

Readers of a volume on this host share one read-only Cinder attachment and
one os-brick connection: the first reader attaches, later readers join, the
last one out leaves it idle in the warm cache (warm.py), which detaches it
later or at once when someone else needs the volume.  Writers get an
exclusive read-write attachment.

Who holds what lives in a record per volume (holders.py), changed only under
that volume's external lock; the lock covers the attach and detach critical
sections, never the transfer.  Holders are named by pid and process start
time, so a process killed at any point is noticed by the next user of the
volume, which finishes or undoes its work.  Before disconnecting, we check
Cinder for another attachment of the volume on this host (nova, say) and
leave the device alone if there is one.
"""

from concurrent import futures
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import time
import types
import zlib

from glance_store import exceptions

from glance_cinder_store import activity
from glance_cinder_store import cinder
from glance_cinder_store import connectors
from glance_cinder_store.connectors import base as connector_base
from glance_cinder_store import holders
from glance_cinder_store import keepers
from glance_cinder_store import privileged
from glance_cinder_store.privileged import access
from glance_cinder_store import transfer
from glance_cinder_store import warm

LOG = logging.getLogger(__name__)

#: Recorded as the attachment's mountpoint: how Cinder shows our attachments.
MOUNTPOINT = 'glance_cinder_store'
#: How many lock files the volumes of this host share.
LOCK_BUCKETS = 1024


def _host_ip(host):
    for family in (socket.AF_INET6, socket.AF_INET):
        try:
            return socket.getaddrinfo(host, None, family)[0][4][0]
        except socket.gaierror:
            continue
    return '127.0.0.1'


def pause_point(name):
    """Fault injection for tests: stop here so a test can kill us.

    Active only when GLANCE_CINDER_STORE_PAUSE_AT is ``<name>:<file>``: we
    create ``file`` and sleep, and the test kills the process there.
    """
    spec = os.environ.get('GLANCE_CINDER_STORE_PAUSE_AT', '')
    point, _, marker = spec.partition(':')
    if point == name and marker:
        with open(marker, 'w') as f:
            f.write(str(os.getpid()))
        time.sleep(300)


def processes_using(path):
    """Holders rebuilt from /proc: live processes with ``path`` open."""
    real = os.path.realpath(path)
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        fd_dir = '/proc/%s/fd' % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:         # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) != real:
                    continue
            except OSError:     # closed meanwhile
                continue
            holder = holders.Holder.found(int(pid))
            if holder is not None:
                found.append(holder)
            break
    return found


#: What a reader needs of a volume, kept in a read-only attachment's record.
VOLUME_FIELDS = ('id', 'name', 'size', 'volume_type', 'metadata', 'status',
                 'encrypted', 'multiattach', 'shared_targets', 'service_uuid',
                 'os-vol-host-attr:host')


def volume_fields(volume):
    fields = {k: getattr(volume, k, None) for k in VOLUME_FIELDS}
    fields['metadata'] = dict(fields['metadata'] or {})
    return fields


class DetachIncomplete(exceptions.BackendException):
    """The device or the attachment could not be removed yet; retried."""


@dataclasses.dataclass
class Attached:
    """What a caller gets while it holds an attachment."""
    volume_id: str
    mode: str
    connection: connector_base.Connection
    device_info: dict
    #: a reader: the device's page cache is kept and was read before, so
    #: a buffered read finds (or leaves) the image in memory
    page_cached: bool = False
    #: a reader of a kept device: ``read_by_others()`` says whether another
    #: process of the host reads it now (a direct read then turns buffered:
    #: one pass over the device feeds both); ``mark_page_cached()`` records
    #: that a buffered read brought the whole image into the page cache
    read_by_others: object = dataclasses.field(default=None, repr=False)
    mark_page_cached: object = dataclasses.field(default=None, repr=False)
    #: ``wait_completed()`` returns once Cinder shows the attachment
    #: attached (the volume ``in-use``), as an online extend wants it;
    #: raises if Cinder refused to complete it
    wait_completed: object = dataclasses.field(default=None, repr=False)
    _target: object = dataclasses.field(default=None, repr=False)

    @property
    def target(self):
        """A path to open, or a file-like object (handle-only protocols)."""
        if self._target is None:
            self._target = self.connection.open_target(self.device_info,
                                                       self.mode == 'rw')
        return self._target

    def close(self):
        """Let go of the target (a handle is this process's to close)."""
        target, self._target = self._target, None
        if target is not None:
            self.connection.close_target(target)

    def extend(self):
        """After Cinder grew the volume: let the host see the new size."""
        return self.connection.extend()


class HostAttachments:
    """Attach and detach volumes on this host, shared and crash-safe."""

    def __init__(self, conf, wait_timeout=None):
        self.conf = conf
        self.host = socket.gethostname()
        self.records = holders.RecordStore(conf.cinder_plus_state_dir)
        self.lock_dir = os.path.join(conf.cinder_plus_state_dir, 'locks')
        self.access = access.DeviceAccess(conf.rootwrap_config)
        self.root_helper = privileged.root_helper(conf.rootwrap_config)
        self.grace = conf.cinder_plus_attach_grace_period
        self.wait_timeout = (conf.cinder_state_transition_timeout
                             if wait_timeout is None else wait_timeout)
        self._props = None
        self._secrets = {}          # attachment id -> full connection info
        # attachment id -> future of our "complete", then whether it took
        self._completing = {}
        connector_base.setup_os_brick(self.lock_dir)
        self.warm = warm.WarmCache(
            conf.cinder_plus_warm_attachments, self.grace,
            conf.cinder_plus_warm_check_interval, self._evict_idle,
            self._released_elsewhere)
        self.keep_page_cache = (conf.cinder_plus_keep_page_cache and
                                self.warm.enabled and
                                not transfer.threads_are_green())
        self.keepers = keepers.for_state_dir(conf.cinder_plus_state_dir,
                                             on_request=self.warm.forget)
        self.activity = activity.HostActivity(conf.cinder_plus_state_dir)

    # -- building blocks ------------------------------------------------

    def lock(self, volume_id):
        # A fixed set of lock files, not one per volume ever attached: a
        # lock file cannot be removed safely while someone may open it, so
        # volumes share LOCK_BUCKETS files (critical sections are short and
        # never nested).
        bucket = zlib.crc32(volume_id.encode()) % LOCK_BUCKETS
        return holders.host_lock('cinder-plus-%04d' % bucket, self.lock_dir)

    def connector_properties(self):
        if self._props is None:
            props = connector_base.host_connector(
                self.root_helper, _host_ip(self.host), self.host,
                self.conf.cinder_use_multipath,
                self.conf.cinder_enforce_multipath)
            props['mountpoint'] = MOUNTPOINT
            self._props = props
        return dict(self._props)

    def connection(self, record, volume=None, volumes=None):
        """The record's connection; with ``volumes``, with its secrets."""
        info = (self._connection_info(volumes, record) if volumes
                else record.connection_info)
        return connectors.for_connection(
            info, root_helper=self.root_helper,
            use_multipath=self.conf.cinder_use_multipath,
            mount_point_base=self.conf.cinder_mount_point_base,
            volume=volume)

    # -- public API ---------------------------------------------------------

    @contextlib.contextmanager
    def attach(self, volumes, volume, mode, fill_bytes=0):
        """Attach ``volume`` ('ro' shared or 'rw' exclusive) for the block.

        ``fill_bytes``: a reader's image size; if the block read the device
        uncached and the attachment stays warm, that much of it is brought
        into the page cache afterwards, in the background.
        """
        me = holders.Holder.me()
        record = self._acquire(volumes, volume, mode, me)
        attached = None
        done = False
        try:
            connection = self.connection(record, volume, volumes)
            if connection.local_path:
                # on every open, shared or new: is the device the volume?
                connection.check_identity(record.device_info,
                                          record.device_id, volume.id)
            attached = Attached(
                volume.id, mode, connection, record.device_info,
                wait_completed=functools.partial(
                    self._wait_completed, volumes, record.attachment_id))
            if (mode == 'ro' and connection.local_path and
                    self.keep_page_cache):
                self.keepers.keep(volume.id, record.device_path)
                if self.keepers.holds(volume.id):
                    attached.page_cached = self._reads_page_cache(
                        record, volume.id, fill_bytes)
                    attached.read_by_others = functools.partial(
                        self._read_by_others, volume.id)
                    attached.mark_page_cached = functools.partial(
                        self._filled, volume.id, record.attachment_id)
            yield attached
            done = True
        finally:
            if attached is not None:
                attached.close()
            completed = self._complete_answered(volumes,
                                                record.attachment_id)
            self._completing.pop(record.attachment_id, None)
            try:
                self._release(volumes, volume.id, me, volume,
                              completed=completed)
            except Exception:
                LOG.exception('volume %s: detach failed; the next user of '
                              'the volume or the self-healing pass will '
                              'finish it', volume.id)
                # A reader has its bytes; a writer's volume must be
                # detached before it can be made read-only and used.
                if mode == 'rw' and done:
                    raise
            if (done and fill_bytes and mode == 'ro' and
                    not attached.page_cached and
                    not self._in_page_cache(volume.id)):
                self.keepers.fill(                  # if still kept
                    volume.id, fill_bytes,
                    busy=functools.partial(self._fill_must_wait, volume.id),
                    done=functools.partial(self._filled, volume.id,
                                           record.attachment_id))

    def _fill_must_wait(self, volume_id):
        """Whether a fill of ``volume_id`` should wait now.

        While a process of this host holds the attachment (the reads share
        the device), or while the host uploads or downloads anything.
        """
        if self.activity.busy():
            return True
        record = self.records.load(volume_id)
        return record is not None and bool(record.holders)

    def _peek(self, volume_id):
        """The record for a look, None if there is none or it is unreadable.

        Only for hints (how to read, whether to fill): decisions that
        change the record go through ``_load``, which rebuilds a bad one.
        """
        try:
            return self.records.load(volume_id)
        except holders.CorruptRecord:
            return None

    def _read_by_others(self, volume_id):
        """Whether more than one process of the host holds the device."""
        record = self._peek(volume_id)
        return record is not None and len(record.holders) > 1

    def _in_page_cache(self, volume_id):
        record = self._peek(volume_id)
        return record is not None and bool(record.in_page_cache)

    def _filled(self, volume_id, attachment_id):
        """Record that the attachment's image is in the page cache.

        For every process of the host: the page cache is the device's.
        """
        with self.lock(volume_id):
            record = self.records.load(volume_id)
            if (record is not None and record.state == holders.ATTACHED and
                    record.attachment_id == attachment_id):
                record.in_page_cache = True
                self.records.save(record, durable=False)

    def _reads_page_cache(self, record, volume_id, image_bytes):
        """Whether a reader that joined ``record`` should read buffered.

        Not the first read of the attachment: that one reads direct and
        fills the page cache afterwards.  Later ones read buffered when
        others read the device at the same time (they share what each
        brings in) or when the fill is done; while it is still running, a
        direct read is faster than waiting for it.
        """
        if record.reads < 2 or not self.keepers.holds(volume_id):
            return False
        return (len(record.holders) > 1 or not image_bytes or
                record.in_page_cache)

    def warm_volume(self, volume_id):
        """The volume of a read-only attachment kept on this host, or None.

        While this host holds an attachment of the volume, Cinder lets
        nobody delete, extend or re-type it, so what the attaching process
        recorded (or this process's warm cache kept) may stand in for a
        Cinder GET: the first byte of a warm download comes without a
        round trip, whichever glance-api process the request lands on.
        """
        volume = self.warm.volume(volume_id)
        if volume is not None:
            return volume
        record = self._peek(volume_id)
        if (record is None or record.mode != 'ro' or not record.joinable or
                not record.volume or
                record.boot not in (None, holders.boot_id())):
            return None
        return types.SimpleNamespace(**record.volume)

    def release_idle(self, volumes, volume_id):
        """Detach a lingering attachment nobody uses; True if none is left."""
        self.warm.forget(volume_id)
        return self._detach_unused(volumes, volume_id) != 'held'

    def recover(self, volumes):
        """Undo every attachment of this host whose holders all died."""
        return [volume_id for volume_id in self.records.volume_ids()
                if self._detach_unused(volumes, volume_id,
                                       spare_lingering=True) == 'detached']

    def detach_unused(self, volumes, volume_id, dry_run=False):
        """For the self-healing pass: see ``_detach_unused``."""
        return self._detach_unused(volumes, volume_id, spare_lingering=True,
                                   dry_run=dry_run)

    def _detach_unused(self, volumes, volume_id, spare_lingering=False,
                       dry_run=False):
        """Detach ``volume_id`` if no live holder is left.

        Returns 'absent' (no record), 'detached' (or 'would detach' in a
        dry run), 'held' (live holders) or 'lingering' (idle within its
        grace period, when ``spare_lingering``).
        """
        with self.lock(volume_id):
            record = self._load(volumes, volume_id, dry_run=dry_run)
            if record is None:
                return 'absent'
            record.prune()
            if record.holders or (spare_lingering and
                                  self._lingering(record)):
                if not dry_run:
                    self.records.save(record, durable=False)
                return 'held' if record.holders else 'lingering'
            if dry_run:
                return 'would detach'
            self._detach(volumes, record)
            return 'detached'

    def adopt(self, volumes, volume_id, attachment_id, dry_run=False):
        """Undo an attachment of ours on this host that no record names.

        Under the volume's lock, like every detach: if a record appeared
        meanwhile it decides; a device some process still has open is left
        alone; otherwise the device is disconnected, then the attachment
        deleted.  Returns 'held', 'detached' or 'would detach'.
        """
        with self.lock(volume_id):
            record = self._load(volumes, volume_id, dry_run=dry_run)
            if record is not None and record.attachment_id == attachment_id:
                return 'held'       # tracked after all: the record decides
            return self._adopt_orphan(volumes, volume_id, attachment_id,
                                      dry_run)

    def _adopt_orphan(self, volumes, volume_id, attachment_id, dry_run):
        attachment = volumes.attachment_show(attachment_id)
        record = holders.Record(
            volume_id, attachment_id,
            'rw' if attachment.attach_mode == 'rw' else 'ro',
            state=holders.ATTACHED,
            connection_info=attachment.connection_info)
        if record.connection_info:
            path = self._device_of(record)
            if path:
                record.device_info = {'path': path}
                if processes_using(path):
                    return 'held'
        if dry_run:
            return 'would detach'
        self._secrets[attachment_id] = attachment.connection_info
        # The attachment is not in the record file: keep that file as is.
        self._detach_orphan(volumes, record)
        return 'detached'

    def _detach_orphan(self, volumes, record):
        record.state = holders.DETACHING
        self._remove_device(volumes, record, save=False)
        volumes.attachment_delete(record.attachment_id)
        self._secrets.pop(record.attachment_id, None)

    def _device_of(self, record):
        connection = self.connection(record)
        try:
            paths = connection.brick.get_volume_paths(connection.properties)
        except Exception as e:
            LOG.warning('volume %s: cannot find its device (%s)',
                        record.volume_id, e)
            return None
        return paths[0] if paths else None

    # -- the critical sections ----------------------------------------------

    def _lingering(self, record):
        return (record.mode == 'ro' and record.state == holders.ATTACHED and
                record.boot in (None, holders.boot_id()) and
                record.idle_since is not None and
                time.time() - record.idle_since < self.grace)

    def _acquire(self, volumes, volume, mode, me):
        deadline = time.monotonic() + self.wait_timeout
        delay = 0.05
        while True:
            with self.lock(volume.id):
                record = self._load(volumes, volume.id, volume)
                if record is not None:
                    if record.prune():
                        LOG.info('volume %s: dropped holders that died',
                                 volume.id)
                    if not record.holders and not (
                            mode == 'ro' and self._lingering(record)):
                        # also finishes an earlier detach that failed
                        self.warm.forget(volume.id)
                        self._detach(volumes, record)
                        record = None
                if record is None:
                    return self._attach_new(volumes, volume, mode, me)
                if (mode == 'ro' and record.mode == 'ro' and
                        record.state == holders.ATTACHED):
                    record.holders.append(me)
                    record.idle_since = None
                    record.reads += 1
                    self.records.save(record, durable=False)
                    self.warm.take(volume.id)
                    return record
                busy = record.mode
            if time.monotonic() > deadline:
                raise exceptions.BackendException(
                    'volume %s is attached %s on this host by another '
                    'process; gave up after %ss' % (
                        volume.id, 'read-write' if busy == 'rw'
                        else 'read-only', self.wait_timeout))
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _attach_new(self, volumes, volume, mode, me):
        # The connector goes with the create: Cinder answers with the
        # connection info, no separate attachment update needed.
        attachment = volumes.attachment_create(volume.id, mode,
                                               self.connector_properties())
        record = holders.Record(volume.id, attachment['id'], mode,
                                holders=[me], boot=me.boot,
                                guard=connector_base.guard_of(volume),
                                volume=(volume_fields(volume)
                                        if mode == 'ro' else None),
                                reads=1 if mode == 'ro' else 0)
        try:
            self.records.save(record)
        except OSError as e:
            self._undo_unrecorded(volumes, record)
            raise exceptions.BackendException(
                'volume %s: cannot record its attachment in '
                'cinder_plus_state_dir %s (%s); nothing was attached' % (
                    volume.id, self.records.state_dir, e))
        pause_point('attaching')
        try:
            record.connection_info = attachment.get('connection_info')
            if not record.connection_info:     # an older Cinder
                record.connection_info = volumes.attachment_update(
                    record.attachment_id,
                    self.connector_properties()).connection_info
            self._secrets[record.attachment_id] = record.connection_info
            self.records.save(record)
            connection = self.connection(record, volume)
            with connector_base.guarded(record.guard):
                record.device_info = connection.connect()
            self.records.save(record)
            if connection.local_path:
                record.device_id = connection.identity(record.device_info)
            # "complete" only moves the attachment and the volume to their
            # attached status; the device is usable now, so the caller's
            # first read or write goes on beside it.  This process stays a
            # holder until it has the answer (_complete_answered): no
            # detach can overtake the complete.
            self._completing[record.attachment_id] = cinder.in_background(
                volumes.attachment_complete, record.attachment_id)
            if connection.local_path:
                record.acl_granted = self.access.grant(record.device_path,
                                                       writable=mode == 'rw')
            record.state = holders.ATTACHED
            self.records.save(record)
            return record
        except BaseException:
            LOG.exception('attaching volume %s failed; undoing', volume.id)
            pending = self._completing.pop(record.attachment_id, None)
            if pending is not None:
                futures.wait([pending])     # the detach must not overtake it
            self._detach(volumes, record)
            raise

    def _undo_unrecorded(self, volumes, record):
        """Delete an attachment no record names yet (nothing connected).

        Left behind, only an operator's clean-up would find it, and a
        volume without multiattach would stay reserved for this host.
        """
        try:
            volumes.attachment_delete(record.attachment_id)
        except Exception as e:
            LOG.warning('volume %s: could not delete attachment %s that no '
                        'record names (%s); the clean-up tool '
                        '(--untracked) deletes it', record.volume_id,
                        record.attachment_id, e)

    def _complete_answered(self, volumes, attachment_id):
        """Wait for this process's "complete" of the attachment, if pending.

        True once Cinder took it (or if nothing is pending here); a refused
        one is asked again once.  False if Cinder refused it both times:
        the holders had their device all the same, but an attachment Cinder
        still shows as attaching is not kept warm.
        """
        pending = self._completing.get(attachment_id)
        if pending is None or isinstance(pending, bool):
            return pending is not False
        try:
            pending.result()
            answer = True
        except Exception as e:
            try:
                volumes.attachment_complete(attachment_id)
                answer = True
            except Exception as again:
                LOG.warning('attachment %s: Cinder did not complete it (%s; '
                            'again: %s); it is detached once its holders '
                            'are done', attachment_id, e, again)
                answer = False
        self._completing[attachment_id] = answer
        return answer

    def _wait_completed(self, volumes, attachment_id):
        """For calls Cinder takes only on an in-use volume (online extend)."""
        if not self._complete_answered(volumes, attachment_id):
            raise exceptions.BackendException(
                'attachment %s: Cinder did not complete it, so the volume '
                'is not in-use' % attachment_id)

    def _release(self, volumes, volume_id, me, volume=None, completed=True):
        """Let go of ``me``'s hold; the last holder keeps it warm or detaches.

        ``completed``: False if Cinder refused this process's "complete" of
        the attachment.  The record says so for every process of the host,
        since the last holder may be one that never sent it.
        """
        with self.lock(volume_id):
            record = self._load(volumes, volume_id)
            if record is None:
                LOG.warning('volume %s: attachment record vanished while in '
                            'use', volume_id)
                return
            record.holders = [h for h in record.holders if h != me]
            record.prune()
            record.uncompleted = record.uncompleted or not completed
            if record.holders:
                self.records.save(record, durable=False)
            elif (not record.uncompleted and record.mode == 'ro' and
                  record.state == holders.ATTACHED and self.warm.enabled):
                record.idle_since = time.time()
                self.records.save(record, durable=False)
                self.warm.keep(volume_id, volumes, volume)
            else:
                self._detach(volumes, record)

    # -- the warm cache's hooks ---------------------------------------------

    def _evict_idle(self, volume_id, volumes, force):
        """Detach an idle attachment (unless another process re-used it)."""
        self.keepers.drop(volume_id)
        return self._detach_unused(volumes, volume_id,
                                   spare_lingering=not force)

    def _released_elsewhere(self, volumes, volume_ids, each):
        """Ids of volumes another host asked us to let go of.

        With the store's own credentials the query for marked volumes is
        the host's, not each process's (``warm.ReleaseBoard``).
        """
        key = getattr(volumes, 'service_key', None)
        if each or key is None:
            return volumes.release_requested(volume_ids, each=each)
        marked = self._release_board(key).marked(volumes.marked_for_release)
        if marked is None:          # Cinder will not filter: look at each
            return volumes.release_requested(volume_ids, each=True)
        return [v for v in volume_ids if v in marked]

    def _release_board(self, key):
        # fresh for half a check: another host waits at most 1.5 checks
        return warm.ReleaseBoard(
            os.path.join(self.records.state_dir, 'release-marks-%s' % key),
            self.conf.cinder_plus_warm_check_interval / 2, self.lock_dir)

    def _detach(self, volumes, record):
        """Undo ``record`` as far as it got: ACL, device, attachment, file.

        The record says DETACHING (nobody joins it) before the device goes,
        and DETACHED once it is gone; the Cinder attachment is deleted only
        then.  If either step fails the record stays, holding no one, and
        the next user of the volume or the self-healing pass retries.
        """
        if record.state != holders.DETACHED:
            record.state = holders.DETACHING
            record.holders = []
            self._save_or_forget(record)
            if record.mode == 'ro':
                self.keepers.let_go_everywhere(record.volume_id,
                                               record.device_path)
            pause_point('detaching')
            self._remove_device(volumes, record)
            record.state = holders.DETACHED
            self._save_or_forget(record)
        try:
            volumes.attachment_delete(record.attachment_id)
        except Exception as e:
            raise DetachIncomplete(
                'volume %s: device detached but Cinder attachment %s is not '
                'deleted yet (%s); it will be retried' % (
                    record.volume_id, record.attachment_id, e))
        self._secrets.pop(record.attachment_id, None)
        self.records.remove(record.volume_id)

    def _save_or_forget(self, record):
        """Save a detach's progress; on a full disk, drop the record.

        Removing a file needs no space: nobody joins a volume without a
        record, and the detach goes on.  Only if it fails too, or the
        process dies before it ends, is the attachment left untracked (the
        clean-up tool's --untracked finds it).
        """
        try:
            self.records.save(record)
        except OSError as e:
            LOG.warning('volume %s: cannot save its attachment record (%s); '
                        'removing it and detaching all the same',
                        record.volume_id, e)
            self.records.remove(record.volume_id)

    def _remove_device(self, volumes, record, save=True):
        """Disconnect the device unless someone else on this host uses it."""
        path = record.device_path
        if path and record.acl_granted:
            self.access.revoke(path)
            record.acl_granted = False
        if not record.connection_info:
            return
        # A writer's volume is ours alone (a new image, or one we are
        # growing); a reader's may also be in use by nova on this host.
        if record.mode == 'ro':
            try:
                others = [a for a in volumes.host_attachments(
                    record.volume_id, self.host)
                    if a != record.attachment_id]
            except exceptions.NotFound:
                others = []
            if others:
                LOG.info('volume %s: leaving the device, attachment(s) %s on '
                         'this host still use it', record.volume_id, others)
                return
        try:
            with connector_base.guarded(record.guard):
                self.connection(record, volumes=volumes).disconnect(
                    record.device_info)
        except Exception as e:
            if save:
                self.records.save(record)
            raise DetachIncomplete(
                'volume %s: os-brick could not disconnect the device (%s); '
                'the Cinder attachment %s is kept and the detach will be '
                'retried' % (record.volume_id, e, record.attachment_id))

    def _connection_info(self, volumes, record):
        """The full connection info: records keep none of its secrets."""
        info = self._secrets.get(record.attachment_id)
        if info is not None:
            return info
        if not record.stripped:
            return record.connection_info
        try:
            return volumes.attachment_show(
                record.attachment_id).connection_info
        except Exception as e:
            LOG.warning('volume %s: cannot fetch connection info of '
                        'attachment %s (%s); disconnecting with the record\'s',
                        record.volume_id, record.attachment_id, e)
            return record.connection_info

    def _load(self, volumes, volume_id, volume=None, dry_run=False):
        try:
            return self.records.load(volume_id)
        except holders.CorruptRecord as e:
            if dry_run:
                LOG.warning('volume %s: attachment record unreadable (%s)',
                            volume_id, e)
                return None
            LOG.warning('volume %s: attachment record unreadable (%s); '
                        'rebuilding it from Cinder', volume_id, e)
            return self._rebuild(volumes, volume_id)

    def _rebuild(self, volumes, volume_id):
        """A record from Cinder's attachments and the processes in /proc."""
        self.records.remove(volume_id)
        try:
            volume = volumes.get(volume_id)
        except exceptions.NotFound:
            return None
        ours = [a for a in volume.attachments
                if a.get('host_name') == self.host and
                a.get('device') == MOUNTPOINT]
        if not ours:
            return None
        for extra in ours[1:]:
            volumes.attachment_delete(extra['attachment_id'])
        attachment = volumes.attachment_show(ours[0]['attachment_id'])
        record = holders.Record(
            volume_id, attachment.id,
            'rw' if attachment.attach_mode == 'rw' else 'ro',
            state=holders.ATTACHED,
            connection_info=attachment.connection_info,
            acl_granted=os.getuid() != 0)
        connection = self.connection(record)
        paths = connection.brick.get_volume_paths(connection.properties)
        if paths:
            record.device_info = {'path': paths[0]}
            record.holders = processes_using(paths[0])
        self.records.save(record)
        return record
