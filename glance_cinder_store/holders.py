"""The per-host record of one attached volume, and who is using it.

A record is a small JSON file in ``cinder_plus_state_dir`` named after the
volume.  It is read and written only under that volume's external lock (see
attach.py), written atomically (temp file, fsync, rename), and names each
holder by pid, process start time and a token, so a holder that died (even
by SIGKILL) is recognised and dropped by the next reader or writer.  A file
that cannot be parsed is reported as ``CorruptRecord`` so the caller rebuilds
it from Cinder and /proc instead of trusting it.
"""

import dataclasses
import json
import os
import threading
import uuid

from glance_store import exceptions

ATTACHING = 'attaching'
ATTACHED = 'attached'


class CorruptRecord(Exception):
    """The record file exists but cannot be trusted."""


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
class Holder:
    pid: int
    start: int
    token: str

    @classmethod
    def me(cls):
        """A new holder for the calling thread of this process."""
        pid = os.getpid()
        return cls(pid, process_start_time(pid),
                   '%s-%s' % (threading.get_ident(), uuid.uuid4().hex[:8]))

    def alive(self):
        return process_start_time(self.pid) == self.start


@dataclasses.dataclass
class Record:
    volume_id: str
    attachment_id: str
    mode: str                      # 'ro' or 'rw'
    state: str = ATTACHING         # ATTACHING until os-brick connected it
    connection_info: dict = None
    device_info: dict = None
    acl_granted: bool = False      # we added an ACL entry to revoke
    holders: list = dataclasses.field(default_factory=list)
    idle_since: float = None       # last holder left (grace period)

    @property
    def device_path(self):
        return (self.device_info or {}).get('path')

    def prune(self):
        """Drop holders whose process has died; return how many."""
        live = [h for h in self.holders if h.alive()]
        dropped = len(self.holders) - len(live)
        self.holders = live
        return dropped

    def to_json(self):
        data = dataclasses.asdict(self)
        data['holders'] = [dataclasses.asdict(h) for h in self.holders]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
            data['holders'] = [Holder(**h) for h in data['holders']]
            record = cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CorruptRecord(str(e))
        if record.mode not in ('ro', 'rw') or not record.attachment_id:
            raise CorruptRecord('bad mode or attachment id')
        return record


class RecordStore:
    """Record files for this host, one per attached volume."""

    def __init__(self, state_dir):
        self.dir = os.path.join(state_dir, 'attachments')
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
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

    def save(self, record):
        path = self.path(record.volume_id)
        tmp = '%s.%d.tmp' % (path, os.getpid())
        with open(tmp, 'w') as f:
            f.write(record.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def remove(self, volume_id):
        try:
            os.unlink(self.path(volume_id))
        except FileNotFoundError:
            pass

    def volume_ids(self):
        return sorted(name[:-5] for name in os.listdir(self.dir)
                      if name.endswith('.json'))
