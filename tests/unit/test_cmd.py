"""The operator tools' decisions, on fake Cinder data."""

import datetime
import socket
import subprocess

from glance_cinder_store import attach
from glance_cinder_store.cmd import cleanup
from glance_cinder_store import holders
from glance_cinder_store import store as store_mod


class Vol:
    def __init__(self, vid, metadata=None, attachments=()):
        self.id = vid
        self.metadata = metadata or {}
        self.attachments = list(attachments)


def mark(host, pid, age_s):
    since = (datetime.datetime.now(datetime.timezone.utc) -
             datetime.timedelta(seconds=age_s)).isoformat(timespec='seconds')
    return {store_mod.UPLOAD_MARK: 'host=%s pid=%d since=%s'
            % (host, pid, since)}


def test_mark_round_trip():
    text = store_mod._upload_mark()
    host, pid, since = cleanup.parse_mark(text)
    assert host == socket.gethostname() and pid > 0 and since.tzinfo


def test_abandoned_uploads():
    here = socket.gethostname()
    gone = subprocess.Popen(['true'])
    gone.wait()
    vols = [
        Vol('done', {'image_size': '3'}),
        Vol('mine-alive', mark(here, 1, 10)),            # pid 1 lives
        Vol('mine-dead', mark(here, gone.pid, 10)),
        Vol('elsewhere-recent', mark('other-host', 5, 10)),
        Vol('elsewhere-old', mark('other-host', 5, 7200)),
        Vol('garbled', {store_mod.UPLOAD_MARK: 'nonsense'}),
    ]
    found = {v.id for v, why in cleanup.abandoned_uploads(vols, 3600)}
    assert found == {'mine-dead', 'elsewhere-old', 'garbled'}


def test_untracked_attachments(tmp_path):
    class Host:
        host = socket.gethostname()
        records = holders.RecordStore(str(tmp_path))
    Host.records.save(holders.Record('v1', 'known', 'ro'))
    ours = {'host_name': Host.host, 'device': attach.MOUNTPOINT}
    vols = [Vol('v1', attachments=[dict(ours, attachment_id='known')]),
            Vol('v2', attachments=[dict(ours, attachment_id='stray'),
                                   {'host_name': Host.host,
                                    'device': '/dev/vdb',
                                    'attachment_id': 'nova'},
                                   {'host_name': 'other',
                                    'device': attach.MOUNTPOINT,
                                    'attachment_id': 'far'}])]
    found = [(v.id, a) for v, a in cleanup.untracked_attachments(Host, vols)]
    assert found == [('v2', 'stray')]
