"""One reconciler for this host's leftovers, and the pass that runs it.

What a killed process leaves on this host is undone here, and only here:
attachments whose holders all died are detached (device first, then the
Cinder attachment), and volumes of uploads whose uploader died are deleted
once their attachment is safely gone.  glance-api runs it when a store
starts and then periodically (``cinder_plus_self_heal_interval``), in a
daemon thread that never blocks a request, one pass at a time per host;
``glance-cinder-store-cleanup`` runs the same ``reconcile`` (with
``--dry-run``, the same decisions, no action).  Liveness comes from
holders.py: nothing judged ``unknown`` (another host or pid namespace) is
touched, and age alone never condemns an upload of this host.
"""

import dataclasses
import fcntl
import json
import logging
import os
import random
import threading
import time

from glance_store import exceptions

from glance_cinder_store import attach
from glance_cinder_store import holders
from glance_cinder_store import pool

LOG = logging.getLogger(__name__)

#: Seconds a pass waits for a detached volume to become deletable.
SETTLE_TIMEOUT = 15

#: Seconds between two periodic passes of a store that list every volume
#: (per host), while the last listing found uploads of this host marked
#: before the host was named in them (an upgrade under way).  The passes
#: between ask Cinder only for the volumes marked as uploads of this host.
FULL_LISTING_EVERY = 600
#: The same once the last listing found none: then the filtered query sees
#: everything a pass acts on, and a listing (of every volume of the cloud,
#: per store and host) is only the backstop for hand edits.
FULL_LISTING_CLEAN_EVERY = 6 * 3600

#: One pass at a time within a process (flock is per process).
_PROCESS_LOCK = threading.Lock()


@dataclasses.dataclass
class Finding:
    """One thing a pass found, and what it did (or would do) about it."""
    volume_id: str
    action: str         # 'detach', 'delete volume', 'keep', 'report'
    why: str
    outcome: str = ''
    image_id: str = None

    def __str__(self):
        return 'volume %s: %s (%s)%s' % (
            self.volume_id, self.action, self.why,
            ': %s' % self.outcome if self.outcome else '')


def store_volumes(store, volumes, uploads_of=None):
    """The volumes of this store's volume type (every project if allowed).

    ``uploads_of``: only those marked as uploads of that host.
    """
    found = volumes.list_all(
        metadata={holders.UPLOAD_HOST: uploads_of} if uploads_of else None)
    wanted = store.store_conf.cinder_volume_type
    return [v for v in found if not wanted or v.volume_type == wanted]


def missed_by_query(all_volumes, host):
    """Ids of ``host``'s marked uploads that the filtered query misses.

    Marked by an earlier version, before the upload host was named beside
    the mark: only a listing of every volume finds them.  A mark older
    still names no host at all, and is judged as this host's.
    """
    missed = []
    for vol in all_volumes:
        if (vol.metadata or {}).get(holders.UPLOAD_HOST) == host:
            continue
        mark, _ = holders.upload_mark_of(vol)
        if mark is not None and mark.uploader.host in (None, host):
            missed.append(vol.id)
    return missed


def _dead_uploads_path(state_dir):
    return os.path.join(state_dir, 'dead-uploads.json')


def remember_dead_upload(state_dir, image_id, volume_id):
    """Note an image a dead upload left 'saving', for the clean-up tool."""
    entries = dead_uploads(state_dir)
    entries[image_id] = volume_id
    save_dead_uploads(state_dir, entries)


def dead_uploads(state_dir):
    """{image id: volume id} of images whose upload died on this host."""
    try:
        with open(_dead_uploads_path(state_dir)) as f:
            return dict(json.load(f))
    except (OSError, ValueError, TypeError):
        return {}


def save_dead_uploads(state_dir, entries):
    path = _dead_uploads_path(state_dir)
    tmp = '%s.%d.tmp' % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, 'w') as f:
        json.dump(entries, f)
    os.replace(tmp, path)


class Healer:
    """Reconciles one store's leftovers on this host."""

    def __init__(self, store):
        self.store = store
        self.conf = store.store_conf
        #: after a pass that listed every volume: ``missed_by_query``'s ids
        self.missed_by_query = None

    @property
    def attachments(self):
        return self.store.attachments

    def reconcile(self, volumes, dry_run=False, untracked=False,
                  stale_after=None, everything=True):
        """Undo what dead processes left; a list of ``Finding``.

        ``untracked``: also undo attachments of ours on this host that no
        record names (operator runs only: another state folder on this host
        may track them).  ``stale_after``: seconds without heartbeat after
        which another host's upload counts as dead (default: the option).
        ``everything=False``: look only at the volumes marked as uploads of
        this host (enough unless another host's uploads are judged too).
        """
        if stale_after is None:
            stale_after = self.conf.cinder_plus_upload_stale_after
        findings = self._records(volumes, dry_run)
        everything = everything or untracked or stale_after > 0
        host = holders.host_name()
        all_volumes = store_volumes(self.store, volumes,
                                    uploads_of=None if everything else host)
        if everything:
            self.missed_by_query = missed_by_query(all_volumes, host)
        findings += self._uploads(volumes, all_volumes, dry_run,
                                  stale_after)
        if untracked:
            findings += self._untracked(volumes, all_volumes, dry_run)
        return findings

    # -- the three kinds of leftovers -----------------------------------

    def _records(self, volumes, dry_run):
        found, lingering = [], []
        for volume_id in self.attachments.records.volume_ids():
            try:
                outcome = self.attachments.detach_unused(volumes, volume_id,
                                                         dry_run=dry_run)
            except Exception as e:
                found.append(Finding(volume_id, 'detach', 'holders died',
                                     'failed, retried later: %s' % e))
                continue
            if outcome in ('detached', 'would detach'):
                found.append(Finding(volume_id, 'detach',
                                     'its holders on this host died',
                                     outcome))
            elif outcome == 'lingering' and self._of_this_store(volume_id):
                lingering.append(volume_id)
        return found + self._wanted_elsewhere(volumes, lingering, dry_run)

    def _of_this_store(self, volume_id):
        """Whether this store's pass asks Cinder about the record's volume.

        Stores share the state folder by default: each asks only about its
        own volume type's records, so a pass costs one GET per lingering
        attachment of the host, not one per store.
        """
        wanted = self.conf.cinder_volume_type
        if not wanted:
            return True
        try:
            record = self.attachments.records.load(volume_id)
        except holders.CorruptRecord:
            return True
        kept = (record.volume or {}).get('volume_type') if record else None
        return kept in (None, wanted)

    def _wanted_elsewhere(self, volumes, lingering, dry_run):
        """Let go of idle attachments another host asked for.

        The process that kept one warm answers such a request itself; this
        pass answers for a process that died (killed, out of memory) while
        keeping one.  Otherwise nobody would until the grace period ran
        out, and a delete through another glance-api host would time out.
        """
        if not lingering:
            return []
        try:
            wanted = volumes.release_requested(lingering)
        except Exception as e:
            LOG.warning('store %s: cannot ask Cinder whether another host '
                        'needs %s: %s', self.store.name, lingering, e)
            return []
        found = []
        for volume_id in wanted:
            if dry_run:
                outcome = 'would detach'
            else:
                try:
                    released = self.attachments.release_idle(volumes,
                                                             volume_id)
                    outcome = 'detached' if released else 'held'
                except Exception as e:
                    outcome = 'failed, retried later: %s' % e
            if outcome != 'held':
                found.append(Finding(volume_id, 'detach',
                                     'idle here, wanted by another host',
                                     outcome))
        return found

    def _uploads(self, volumes, all_volumes, dry_run, stale_after):
        found = []
        for vol in all_volumes:
            mark, error = holders.upload_mark_of(vol)
            image_id = (vol.metadata or {}).get('glance_image_id')
            if error:
                found.append(Finding(vol.id, 'keep', error +
                                     ': not judged, never deleted',
                                     image_id=image_id))
                continue
            if mark is None:
                continue
            verdict = mark.verdict(stale_after)
            if verdict != holders.DEAD:
                continue
            what = ('pool volume kept' if pool.is_pool_volume(vol)
                    else 'upload')
            if mark.failed:
                why = '%s by %s failed' % (what, mark.uploader.describe())
            else:
                why = '%s by %s died (%s)' % (
                    what, mark.uploader.describe(),
                    'silent for %ds' % mark.silent_for()
                    if mark.uploader.verdict() == holders.UNKNOWN
                    else 'process gone or host rebooted')
            found.append(self._delete_upload(volumes, vol, why, dry_run,
                                             image_id, mark))
        return found

    def _delete_upload(self, volumes, vol, why, dry_run, image_id, mark):
        finding = Finding(vol.id, 'delete volume', why, image_id=image_id)
        try:
            left = self._release_ours(volumes, vol, dry_run)
            left += self._release_unfinished(volumes, vol, mark, dry_run)
            if left:
                finding.action = 'keep'
                finding.outcome = 'still attached (%s)' % ', '.join(left)
                return finding
            if dry_run:
                finding.outcome = 'would delete'
                return finding
            # briefly: a volume still busy is retried by the next pass
            volume = volumes.wait_for(volumes.get(vol.id), 'available',
                                      ('in-use', 'detaching', 'attaching',
                                       'reserved'), timeout=SETTLE_TIMEOUT)
            if holders.upload_mark_of(volume)[0] is None:
                finding.action, finding.outcome = 'keep', 'upload finished'
                return finding
            volumes.delete(vol.id)
            finding.outcome = 'deleted'
            if image_id:
                remember_dead_upload(self.conf.cinder_plus_state_dir,
                                     image_id, vol.id)
        except exceptions.NotFound:
            finding.outcome = 'already gone'
        except Exception as e:
            finding.outcome = 'failed, retried later: %s' % e
        return finding

    def _release_ours(self, volumes, vol, dry_run):
        """Detach this host's attachments of a dead upload; what is left."""
        host = self.attachments.host
        left = []
        tracked = self._tracked_attachment(vol.id)
        outcome = self.attachments.detach_unused(volumes, vol.id,
                                                 dry_run=dry_run)
        if outcome in ('held', 'lingering'):
            left.append('held on this host')
        for att in vol.attachments:
            att_id = att['attachment_id']
            if att.get('host_name') != host or (
                    att.get('device') != attach.MOUNTPOINT):
                left.append('%s on %s' % (att_id, att.get('host_name')))
            elif att_id == tracked and outcome in ('detached',
                                                   'would detach'):
                continue
            elif self.attachments.adopt(volumes, vol.id, att_id,
                                        dry_run=dry_run) == 'held':
                left.append('%s in use on this host' % att_id)
        return left

    def _release_unfinished(self, volumes, vol, mark, dry_run):
        """Undo the attachments a dead upload left before completing them.

        Killed between the attachment's create and complete, an upload
        leaves it ``reserved`` or ``attaching``: not in the volume's view,
        no record if the kill came first, and the volume cannot be deleted
        while it exists.  Nobody else attaches an upload's volume, so such an
        attachment is the dead uploader's.  Of another host's upload only a
        ``reserved`` one (never connected anywhere) is undone here: an
        ``attaching`` one may have a device on that host.
        """
        listed = {a['attachment_id'] for a in vol.attachments}
        this_host = mark.uploader.host in (None, self.attachments.host)
        left = []
        for att in volumes.volume_attachments(vol.id):
            if att.id in listed or att.status in ('attached', 'detached'):
                continue
            if att.status != 'reserved' and not this_host:
                left.append('%s %s on %s' % (att.id, att.status,
                                             mark.uploader.host))
            elif self.attachments.adopt(volumes, vol.id, att.id,
                                        dry_run=dry_run) == 'held':
                left.append('%s in use on this host' % att.id)
        return left

    def _tracked_attachment(self, volume_id):
        try:
            record = self.attachments.records.load(volume_id)
        except holders.CorruptRecord:
            return None
        return record.attachment_id if record else None

    def _untracked(self, volumes, all_volumes, dry_run):
        found = []
        host = self.attachments.host
        for vol in all_volumes:
            for att in vol.attachments:
                att_id = att['attachment_id']
                if (att.get('host_name') != host or
                        att.get('device') != attach.MOUNTPOINT or
                        att_id == self._tracked_attachment(vol.id)):
                    continue
                finding = Finding(vol.id, 'detach',
                                  'attachment %s: no record names it'
                                  % att_id)
                try:
                    finding.outcome = self.attachments.adopt(
                        volumes, vol.id, att_id, dry_run=dry_run)
                except Exception as e:
                    finding.outcome = 'failed: %s' % e
                found.append(finding)
        return found


class Periodic:
    """The self-healing pass of one store in one process.

    Runs once soon after start and then every ``interval`` seconds (with
    jitter); a pass is skipped when another process of this host ran one
    for the store less than half an interval ago.
    """

    def __init__(self, store, interval):
        self.healer = Healer(store)
        self.store = store
        self.interval = interval
        self.state_dir = store.store_conf.cinder_plus_state_dir
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='gcs-self-heal-%s'
                                        % self.store.name)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()

    def _run(self):
        delay = random.uniform(0, 1)
        while not self._stop.wait(delay):
            try:
                self.run_once()
            except Exception:
                LOG.exception('store %s: self-healing pass failed; retrying '
                              'in %ss', self.store.name, self.interval)
            delay = self.interval * random.uniform(0.8, 1.2)

    def _stamp(self, kind='heal'):
        return os.path.join(self.state_dir, '%s-%s.stamp'
                            % (kind, self.store.name))

    def _due(self, kind, seconds):
        """Whether this host's last ``kind`` pass is ``seconds`` old."""
        try:
            return time.time() - os.path.getmtime(self._stamp(kind)) >= (
                seconds)
        except OSError:
            return True

    def _done(self, kind, note=''):
        with open(self._stamp(kind), 'w') as f:
            f.write(note)

    def _listing_interval(self):
        """Seconds between full listings: few while they find anything."""
        try:
            with open(self._stamp('listed')) as f:
                clean = f.read().strip() == 'missed 0'
        except OSError:
            clean = False
        return FULL_LISTING_CLEAN_EVERY if clean else FULL_LISTING_EVERY

    def run_once(self):
        """One pass, unless another one runs or ran just now on this host."""
        if not _PROCESS_LOCK.acquire(blocking=False):
            return None
        try:
            with open(os.path.join(self.state_dir, 'heal.lock'), 'a') as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None
                if not self._due('heal', self.interval / 2):
                    return None
                everything = self._due('listed', self._listing_interval())
                findings = self.healer.reconcile(self.store.volumes(),
                                                 everything=everything)
                self._done('heal')
                if everything:
                    missed = self.healer.missed_by_query
                    self._done('listed', '' if missed is None else
                               'missed %d' % len(missed))
                for finding in findings:
                    LOG.info('store %s: self-healing: %s', self.store.name,
                             finding)
                return findings
        finally:
            _PROCESS_LOCK.release()
