"""Who holds what on this host, and the one answer to "is it alive?".

Process identity lives here and nowhere else: a ``Process`` names the host,
the boot (kernel boot id), the pid namespace, the pid and its start time.
Its ``verdict()`` is ``alive``, ``dead`` or ``unknown``: a process of another
host or pid namespace cannot be judged from here and is never called dead;
after a reboot every process of the earlier boot is dead.  Holder records
(one JSON file per attached volume) and upload marks (volume metadata
``glance_cinder_store_upload``, written and parsed only here) both carry one.

A record is read and written only under that volume's external lock (see
attach.py), atomically (temp file, fsync, rename), with mode 0600 in a 0700
folder, and never holds secrets.  A file that cannot be parsed is reported as
``CorruptRecord`` so the caller rebuilds it from Cinder and /proc.
"""

import dataclasses
import datetime
import functools
import json
import logging
import os
import socket
import threading
import uuid

from glance_store import exceptions
from oslo_concurrency import lockutils

LOG = logging.getLogger(__name__)

ATTACHING = 'attaching'
ATTACHED = 'attached'
#: The device is being (or failed to be) disconnected: nobody joins it.
DETACHING = 'detaching'
#: The device is gone from this host; only the Cinder attachment is left.
DETACHED = 'detached'

ALIVE = 'alive'
DEAD = 'dead'
UNKNOWN = 'unknown'

BOOT_ID_FILE = '/proc/sys/kernel/random/boot_id'
#: Tests only: pretend the host rebooted (a new boot id).
BOOT_ID_ENV = 'GLANCE_CINDER_STORE_TEST_BOOT_ID'

#: Volume metadata key present while an upload is in progress.
UPLOAD_MARK = 'glance_cinder_store_upload'
#: Beside it, the uploader's host alone: a value Cinder can filter on, so a
#: host's self-healing pass asks for its own uploads instead of listing
#: every volume of the cloud.
UPLOAD_HOST = 'glance_cinder_store_upload_host'

#: Keys of connection info that are secrets: never written to a record.
SECRET_KEYS = frozenset(('auth_password', 'discovery_auth_password',
                         'keyring', 'password', 'secret', 'access_token',
                         'token'))


class CorruptRecord(Exception):
    """The record file exists but cannot be trusted."""


def boot_id():
    """This boot of this host's kernel (tests may override it)."""
    override = os.environ.get(BOOT_ID_ENV)
    if override:
        return override
    with open(BOOT_ID_FILE) as f:
        return f.read().strip()


@functools.lru_cache(maxsize=None)
def _pid_namespace(pid):
    return str(os.stat('/proc/%s/ns/pid' % pid).st_ino)


def pid_namespace():
    """Identity of our pid namespace: pids mean something only within it."""
    return _pid_namespace('self')


def host_name():
    return socket.gethostname()


def process_start_time(pid):
    """Start time of ``pid`` in clock ticks since boot, or None if gone."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the
    # last ')'.  Field 22 (starttime) is the 20th after it.
    return int(stat.rsplit(b')', 1)[1].split()[19])


@dataclasses.dataclass(frozen=True)
class Process:
    """One process, named so that it can be judged from anywhere."""
    pid: int
    start: int
    host: str = None        # None: a record of an older release (this host)
    boot: str = None
    pidns: str = None

    @classmethod
    def of(cls, pid):
        """``pid`` of our namespace now, or None if it is gone."""
        start = process_start_time(pid)
        if start is None:
            return None
        return cls(pid, start, host_name(), boot_id(), pid_namespace())

    def verdict(self):
        """ALIVE, DEAD or UNKNOWN (another host or pid namespace)."""
        if self.host is not None and self.host != host_name():
            return UNKNOWN
        if self.boot is not None and self.boot != boot_id():
            return DEAD             # this host rebooted since
        if self.pidns is not None and self.pidns != pid_namespace():
            return UNKNOWN
        if self.start is None:      # an older upload mark: pid only
            return UNKNOWN if process_start_time(self.pid) else DEAD
        return ALIVE if process_start_time(self.pid) == self.start else DEAD

    def describe(self):
        return 'pid %s on %s' % (self.pid, self.host or 'this host')


@dataclasses.dataclass(frozen=True)
class Holder(Process):
    token: str = ''

    @classmethod
    def me(cls):
        """A new holder for the calling thread of this process."""
        me = Process.of(os.getpid())
        return cls(me.pid, me.start, me.host, me.boot, me.pidns,
                   '%s-%s' % (threading.get_ident(), uuid.uuid4().hex[:8]))

    @classmethod
    def found(cls, pid):
        """A holder rebuilt from /proc (a process with the device open)."""
        me = Process.of(pid)
        if me is None:
            return None
        return cls(me.pid, me.start, me.host, me.boot, me.pidns, 'recovered')

    def alive(self):
        """Not known dead: holders we cannot judge keep their attachment."""
        return self.verdict() != DEAD


def without_secrets(info):
    """A copy of connection info without passwords, keyrings or tokens."""
    if isinstance(info, dict):
        return {k: without_secrets(v) for k, v in info.items()
                if k.lower() not in SECRET_KEYS}
    if isinstance(info, list):
        return [without_secrets(v) for v in info]
    return info


@dataclasses.dataclass
class Record:
    volume_id: str
    attachment_id: str
    mode: str                      # 'ro' or 'rw'
    state: str = ATTACHING         # ATTACHING -> ATTACHED -> DETACHING ->
    connection_info: dict = None   # DETACHED (attachment delete pending)
    device_info: dict = None
    acl_granted: bool = False      # we added an ACL entry to revoke
    holders: list = dataclasses.field(default_factory=list)
    idle_since: float = None       # last holder left (grace period)
    guard: dict = None             # os-brick guard_connection's inputs
    device_id: dict = None         # identity recorded at connect time
    stripped: bool = False         # secrets were left out of the file
    boot: str = None               # the boot it was made in
    volume: dict = None            # what readers need of the volume (ro)
    reads: int = 0                 # readers that joined since the attach
    in_page_cache: bool = False    # a keeper's fill read the whole image
    uncompleted: bool = False      # Cinder refused its complete: not kept

    @property
    def device_path(self):
        return (self.device_info or {}).get('path')

    @property
    def joinable(self):
        return self.state == ATTACHED

    def prune(self):
        """Drop holders known to be dead; return how many."""
        live = [h for h in self.holders if h.alive()]
        dropped = len(self.holders) - len(live)
        self.holders = live
        return dropped

    def to_json(self):
        # a shallow copy: json.dumps walks the nested dicts itself, and
        # dataclasses.asdict's deep copy was 40% of a save's cost
        data = {f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)}
        data['connection_info'] = without_secrets(self.connection_info)
        data['stripped'] = self.stripped or (
            data['connection_info'] != self.connection_info)
        data['holders'] = [dataclasses.asdict(h) for h in self.holders]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
            data['holders'] = [Holder(**h) for h in data['holders']]
            # keys a newer version added are not ours to judge: skip them
            known = {f.name for f in dataclasses.fields(cls)}
            record = cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CorruptRecord(str(e))
        if record.mode not in ('ro', 'rw') or not record.attachment_id:
            raise CorruptRecord('bad mode or attachment id')
        if record.state not in (ATTACHING, ATTACHED, DETACHING, DETACHED):
            raise CorruptRecord('bad state %r' % record.state)
        return record


#: Seconds before a process waiting for a host-wide lock looks again, and
#: the step by which its wait grows (to at most 0.1 s).  The volumes' locks
#: are held for a millisecond (a reader joins or leaves) or for an attach
#: (0.1-0.3 s): lockutils' default 0.01 made every collision of two
#: downloads cost 10 ms and let a reader oversleep an attach by up to 0.1 s.
LOCK_POLL = 0.001


def host_lock(name, lock_path):
    """A lock every process of the host takes by ``name`` in ``lock_path``.

    oslo.concurrency's external lock, polled every ``LOCK_POLL`` at first
    and without its four debug lines per use.
    """
    return lockutils.lock(name, external=True, lock_path=lock_path,
                          delay=LOCK_POLL, do_log=False)


class RecordStore:
    """Record files for this host, one per attached volume."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.dir = os.path.join(state_dir, 'attachments')
        try:
            for folder in (state_dir, self.dir):
                os.makedirs(folder, mode=0o700, exist_ok=True)
                os.chmod(folder, 0o700)
            probe = os.path.join(self.dir, '.writable')
            with open(probe, 'w'):
                pass
            os.unlink(probe)
        except OSError as e:
            raise exceptions.BadStoreConfiguration(
                store_name='cinder_plus',
                reason='cinder_plus_state_dir %s is not usable (%s): it must '
                       'be a local folder the glance-api user can write'
                       % (state_dir, e))

    def path(self, volume_id):
        return os.path.join(self.dir, volume_id + '.json')

    def load(self, volume_id):
        """The record, None when there is none, CorruptRecord if unreadable."""
        try:
            with open(self.path(volume_id), 'rb') as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return Record.from_json(text)

    def save(self, record, durable=True):
        """Replace the record; every process of the host sees it at once.

        ``durable=False`` skips the fsync, for changes that only matter
        within this boot: who holds the device, how often it was read, how
        long it has been idle, whether its image is in the page cache.  A
        crash of the host ends all of those, and a record that lost them
        (or came back empty) is judged by its boot or rebuilt from Cinder.
        Which attachment and device exist must survive it: those saves
        stay durable.  The fsync cost a warm read 0.3 ms here on a quiet
        disk, and more while the disk writes back an upload.
        """
        path = self.path(record.volume_id)
        tmp = '%s.%d.tmp' % (path, os.getpid())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, 'w') as f:
                f.write(record.to_json())
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            # a full disk: no half-written file left to fill it further
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def remove(self, volume_id):
        try:
            os.unlink(self.path(volume_id))
        except FileNotFoundError:
            pass

    def volume_ids(self):
        return sorted(name[:-5] for name in os.listdir(self.dir)
                      if name.endswith('.json'))


# -- upload marks --------------------------------------------------------

def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


@dataclasses.dataclass(frozen=True)
class UploadMark:
    """Who is writing a volume, since when, and when it last said so.

    Stored as one line of ``key=value`` words in volume metadata (Cinder
    allows 255 characters), so any host reading the volume can judge it.
    """
    uploader: Process
    since: datetime.datetime
    beat: datetime.datetime
    failed: bool = False    # the uploader gave up but could not delete it

    @classmethod
    def mine(cls):
        now = _now()
        return cls(Process.of(os.getpid()), now, now)

    def refreshed(self):
        return dataclasses.replace(self, beat=_now())

    def given_up(self):
        """The mark of an upload that failed: anyone may delete it."""
        return dataclasses.replace(self, beat=_now(), failed=True)

    def metadata(self):
        """The volume metadata that marks an upload in progress."""
        return {UPLOAD_MARK: self.format(), UPLOAD_HOST: self.uploader.host}

    def format(self):
        p = self.uploader
        return ('host=%s boot=%s pidns=%s pid=%d start=%d since=%s beat=%s%s'
                % (p.host, p.boot, p.pidns, p.pid, p.start,
                   self.since.isoformat(), self.beat.isoformat(),
                   ' failed=1' if self.failed else ''))

    @classmethod
    def parse(cls, text):
        """The mark in ``text``; ValueError if it cannot be read."""
        try:
            fields = dict(word.split('=', 1) for word in text.split())
            since = datetime.datetime.fromisoformat(fields['since'])
            beat = datetime.datetime.fromisoformat(
                fields.get('beat', fields['since']))
            start = fields.get('start')
            uploader = Process(int(fields['pid']),
                               int(start) if start else None,
                               fields['host'], fields.get('boot'),
                               fields.get('pidns'))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError('unreadable upload mark %r (%s)' % (text, e))
        if since.tzinfo is None or beat.tzinfo is None:
            raise ValueError('upload mark %r has no time zone' % text)
        return cls(uploader, since, beat, fields.get('failed') == '1')

    def verdict(self, stale_after=0):
        """ALIVE, DEAD or UNKNOWN for the upload behind this mark.

        On this host (same boot and pid namespace) only the process decides:
        age never does.  Elsewhere the upload is dead only when its
        heartbeat is older than ``stale_after`` seconds (0: never).
        """
        if self.failed:
            return DEAD
        verdict = self.uploader.verdict()
        if verdict == UNKNOWN and stale_after > 0 and (
                self.silent_for() > stale_after):
            return DEAD
        return verdict

    def silent_for(self):
        return (_now() - self.beat).total_seconds()


def upload_mark_of(volume):
    """(mark or None, error text or None) for a volume's metadata."""
    text = (getattr(volume, 'metadata', None) or {}).get(UPLOAD_MARK)
    if not text:
        return None, None
    try:
        return UploadMark.parse(text), None
    except ValueError as e:
        return None, str(e)


class Heartbeat:
    """Refresh an upload mark every ``interval`` s while the upload runs.

    Runs in a daemon thread (a green thread under eventlet), never on the
    transfer's path; a failed refresh is logged and retried next time.
    ``stop()`` waits for a refresh under way, so none lands after it.
    """

    def __init__(self, mark, publish, interval):
        self.mark = mark
        self._publish = publish
        self._interval = interval
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        if self._interval > 0:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name='gcs-heartbeat')
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self._interval):
            try:
                self.mark = self.mark.refreshed()
                self._publish(self.mark.format())
            except Exception as e:
                LOG.warning('could not refresh the upload mark: %s', e)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
