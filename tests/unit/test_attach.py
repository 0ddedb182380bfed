"""Host attachments: sharing, exclusivity, crash recovery, foreign users."""

import dataclasses
import errno
import os
import socket
import subprocess
import threading
import time

from glance_store import exceptions
import pytest

from glance_cinder_store import attach
from glance_cinder_store import holders
from tests.unit import fakes

HOST = socket.gethostname()


@pytest.fixture
def make_host(make_store):
    def make(**overrides):
        # The store's own view of its options (backend group + defaults).
        conf = make_store(**overrides).store_conf
        return attach.HostAttachments(conf, wait_timeout=0.5)
    return make


@pytest.fixture
def host(make_host):
    return make_host()


@pytest.fixture
def volume(cinder):
    vol = cinder.create(1, 'image-x', {}, 'gold-type')
    return cinder.get(vol.id)


def creates(cinder):
    return [c for c in cinder.calls if c[0] == 'attachment_create']


def dead_holder():
    proc = subprocess.Popen(['sleep', '60'])
    holder = holders.Holder.found(proc.pid)
    proc.kill()
    proc.wait()
    return holder


def test_readers_share_one_attachment(host, cinder, volume):
    with host.attach(cinder, volume, 'ro') as a:
        with host.attach(cinder, volume, 'ro') as b:
            assert a.target == b.target
            assert len(cinder.attachments) == 1
            record = host.records.load(volume.id)
            assert len(record.holders) == 2
        assert len(cinder.attachments) == 1
    assert cinder.attachments == {}
    assert fakes.FakeConnection.connected == {}
    assert len(creates(cinder)) == 1


def test_readers_in_threads_share(host, cinder, volume):
    inside = threading.Barrier(4)
    counts = []

    def read():
        with host.attach(cinder, volume, 'ro'):
            inside.wait(timeout=5)
            counts.append(len(cinder.attachments))
            inside.wait(timeout=5)

    threads = [threading.Thread(target=read) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert counts == [1, 1, 1, 1]
    assert cinder.attachments == {}


def test_writer_is_exclusive(host, cinder, volume):
    with host.attach(cinder, volume, 'ro'):
        with pytest.raises(exceptions.BackendException, match='read-only'):
            with host.attach(cinder, volume, 'rw'):
                pass
    with host.attach(cinder, volume, 'rw'):
        with pytest.raises(exceptions.BackendException, match='read-write'):
            with host.attach(cinder, volume, 'ro'):
                pass
    assert cinder.attachments == {}


def _plant(host, cinder, volume, holder, state=holders.ATTACHED):
    """Leave behind what a process killed while holding would leave."""
    att = cinder.attachment_create(volume.id, 'ro')
    upd = cinder.attachment_update(
        att["id"], {"host": HOST, "mountpoint": attach.MOUNTPOINT})
    conn = fakes.FakeConnection(upd.connection_info)
    device = None
    if state == holders.ATTACHED:
        device = conn.connect()
        cinder.attachment_complete(att['id'])
    host.records.save(holders.Record(
        volume.id, att['id'], 'ro', state=state,
        connection_info=upd.connection_info, device_info=device,
        holders=[holder]))
    return att['id']


@pytest.mark.parametrize('state', [holders.ATTACHING, holders.ATTACHED])
def test_killed_holder_is_recovered_by_next_user(host, cinder, volume, state):
    stale = _plant(host, cinder, volume, dead_holder(), state)
    started = time.monotonic()
    with host.attach(cinder, volume, 'ro'):
        assert stale not in cinder.attachments
        assert len(cinder.attachments) == 1
    assert time.monotonic() - started < 1
    assert cinder.attachments == {}
    assert fakes.FakeConnection.connected == {}
    assert host.records.volume_ids() == []


def test_recover_undoes_dead_holders_only(host, cinder, volume):
    _plant(host, cinder, volume, dead_holder())
    other = cinder.get(cinder.create(1, 'image-y', {}, 'gold-type').id)
    live = _plant(host, cinder, other, holders.Holder.me())
    assert host.recover(cinder) == [volume.id]
    assert list(cinder.attachments) == [live]


@pytest.mark.parametrize('garbage', [b'', b'{"volume_id": ', b'\x00\xff',
                                     b'{"holders": []}'])
def test_corrupt_record_is_rebuilt_from_cinder(host, cinder, volume,
                                               garbage):
    stale = _plant(host, cinder, volume, dead_holder())
    with open(host.records.path(volume.id), 'wb') as f:
        f.write(garbage)
    with host.attach(cinder, volume, 'ro'):
        # nobody had the device open: the old attachment was undone
        assert stale not in cinder.attachments
    assert cinder.attachments == {}


def test_corrupt_record_keeps_a_device_still_open(host, cinder, volume):
    stale = _plant(host, cinder, volume, dead_holder())
    with open(host.records.path(volume.id), 'w') as f:
        f.write('not json')
    with open(volume.path, 'rb'):      # a live reader holds the device
        with host.attach(cinder, volume, 'ro'):
            assert list(cinder.attachments) == [stale]
        record = host.records.load(volume.id)
        assert record.holders and record.holders[0].token == 'recovered'
    assert len(creates(cinder)) == 1


def test_foreign_attachment_on_this_host_keeps_the_device(host, cinder,
                                                          volume):
    with host.attach(cinder, volume, 'ro'):
        # nova attaches the same volume on this host meanwhile
        cinder.volumes[volume.id].attachments.append(
            {'attachment_id': 'nova-1', 'host_name': HOST, 'device': 'vdb'})
    assert cinder.attachments == {}                   # ours is gone
    assert fakes.FakeConnection.connected == {volume.path: 1}  # device kept


def test_grace_period_then_reaped(make_host, cinder, volume):
    host = make_host(cinder_plus_attach_grace_period=0.3)
    with host.attach(cinder, volume, 'ro'):
        pass
    assert len(cinder.attachments) == 1
    with host.attach(cinder, volume, 'ro'):
        pass
    assert len(creates(cinder)) == 1
    time.sleep(0.8)
    assert cinder.attachments == {}
    assert fakes.FakeConnection.connected == {}


def test_lingering_reader_never_blocks_a_writer(make_host, cinder, volume):
    host = make_host(cinder_plus_attach_grace_period=60)
    with host.attach(cinder, volume, 'ro'):
        pass
    with host.attach(cinder, volume, 'rw'):
        assert [c[2] for c in creates(cinder)] == ['ro', 'rw']
    assert cinder.attachments == {}


def slow_complete(cinder, answer):
    """Cinder's "complete" answers once ``answer`` is set; returns a log."""
    complete = cinder.attachment_complete
    log = []

    def slowly(attachment_id):
        log.append('asked')
        answer.wait(5)
        complete(attachment_id)
        log.append('answered')
    cinder.attachment_complete = slowly
    delete = cinder.attachment_delete

    def deleting(attachment_id):
        log.append('delete')
        delete(attachment_id)
    cinder.attachment_delete = deleting
    return log


def test_attach_failure_undoes_everything(host, cinder, volume,
                                          monkeypatch):
    answer = threading.Event()
    log = slow_complete(cinder, answer)

    def refused(path, writable):
        threading.Timer(0.1, answer.set).start()
        raise OSError(1, 'no ACL for you')
    monkeypatch.setattr(host.access, 'grant', refused)
    with pytest.raises(OSError):
        with host.attach(cinder, volume, 'ro'):
            pass
    # the undo waited for the "complete" in flight before deleting
    assert log == ['asked', 'answered', 'delete']
    assert cinder.attachments == {}
    assert fakes.FakeConnection.connected == {}
    assert host.records.volume_ids() == []


@pytest.mark.parametrize('mode', ['ro', 'rw'])
def test_transfer_starts_while_cinder_completes_the_attachment(
        host, cinder, volume, mode):
    answer = threading.Event()
    log = slow_complete(cinder, answer)
    with host.attach(cinder, volume, mode) as attached:
        assert log == ['asked']     # the device is ours before the answer
        assert os.path.exists(attached.target)
        threading.Timer(0.1, answer.set).start()
    # and no detach overtook the complete
    assert log == ['asked', 'answered', 'delete']
    assert cinder.attachments == {}


def test_refused_complete_is_retried_then_not_kept_warm(make_host, cinder,
                                                        volume):
    host = make_host(cinder_plus_attach_grace_period=60)
    cinder.fail['attachment_complete'] = exceptions.BackendException('x')
    with host.attach(cinder, volume, 'ro') as attached:
        assert os.path.exists(attached.target)      # the read goes on
    names = [c[0] for c in cinder.calls]
    assert names.count('attachment_complete') == 2
    # Cinder still shows it attaching: not kept for the next reader
    assert cinder.attachments == {}
    assert host.records.volume_ids() == []
    del cinder.fail['attachment_complete']
    with host.attach(cinder, volume, 'ro'):
        pass
    assert len(cinder.attachments) == 1         # a completed one stays warm
    host.warm.close()


def test_refused_complete_is_not_kept_warm_by_another_process(
        make_host, cinder, volume):
    """A reader that never sent the complete lets go last: no warm keep.

    The process that sent the refused complete leaves first.
    """
    sender = make_host(cinder_plus_attach_grace_period=60)
    joiner = make_host(cinder_plus_attach_grace_period=60)
    cinder.fail['attachment_complete'] = exceptions.BackendException('x')
    first = sender.attach(cinder, volume, 'ro')
    first.__enter__()
    second = joiner.attach(cinder, volume, 'ro')
    second.__enter__()
    assert len(creates(cinder)) == 1                # joined, not attached
    first.__exit__(None, None, None)
    assert sender.records.load(volume.id).uncompleted
    del cinder.fail['attachment_complete']
    second.__exit__(None, None, None)
    assert cinder.attachments == {}
    assert joiner.records.volume_ids() == []
    sender.warm.close()
    joiner.warm.close()


def disk_full(monkeypatch, records, when):
    """Saves of records fail with ENOSPC while ``when(record)`` holds."""
    save = records.save

    def saving(record, durable=True):
        if when(record):
            raise OSError(errno.ENOSPC, 'No space left on device')
        save(record, durable)
    monkeypatch.setattr(records, 'save', saving)


def test_full_state_disk_attaches_nothing(host, cinder, volume,
                                          monkeypatch):
    disk_full(monkeypatch, host.records, lambda record: True)
    with pytest.raises(exceptions.BackendException,
                       match='cannot record its attachment in '
                             'cinder_plus_state_dir .*No space'):
        with host.attach(cinder, volume, 'ro'):
            pass
    assert len(creates(cinder)) == 1
    assert cinder.attachments == {}             # deleted again
    assert fakes.FakeConnection.connected == {}
    assert host.records.volume_ids() == []


def test_a_save_failing_mid_detach_still_detaches(host, cinder, volume,
                                                  monkeypatch):
    disk_full(monkeypatch, host.records,
              lambda record: record.state == holders.DETACHING)
    with host.attach(cinder, volume, 'rw'):
        pass
    assert cinder.attachments == {}
    assert fakes.FakeConnection.connected == {}
    assert host.records.volume_ids() == []


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    records = holders.RecordStore(str(tmp_path))
    record = holders.Record('vol-1', 'att-1', 'ro')

    def full(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', full)
    with pytest.raises(OSError):
        records.save(record)
    monkeypatch.undo()
    assert os.listdir(records.dir) == []


def test_record_round_trip_and_validation(tmp_path):
    store = holders.RecordStore(str(tmp_path))
    rec = holders.Record('v1', 'a1', 'ro', holders=[holders.Holder.me()])
    store.save(rec)
    assert store.load('v1') == rec
    assert store.load('v2') is None
    with open(store.path('v3'), 'w') as f:
        f.write('{"volume_id": "v3", "attachment_id": "a", "mode": "xx", '
                '"holders": []}')
    with pytest.raises(holders.CorruptRecord):
        store.load('v3')


def test_record_keeps_nested_info_and_leaves_the_record_alone(tmp_path):
    store = holders.RecordStore(str(tmp_path))
    info = {'driver_volume_type': 'iscsi',
            'data': {'target_lun': 1, 'auth_password': 'secret'}}
    rec = holders.Record('v1', 'a1', 'ro', connection_info=info,
                         device_info={'path': '/dev/x'},
                         volume={'id': 'v1', 'metadata': {'k': 'v'}},
                         holders=[holders.Holder.me()])
    store.save(rec)
    loaded = store.load('v1')
    assert loaded.connection_info == {'driver_volume_type': 'iscsi',
                                      'data': {'target_lun': 1}}
    assert loaded.stripped
    assert loaded.volume == rec.volume and loaded.holders == rec.holders
    assert rec.connection_info['data']['auth_password'] == 'secret'


def _count_fsyncs(monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(holders.os, 'fsync',
                        lambda fd: synced.append(fd) or real(fd))
    return synced


def test_only_what_outlives_a_boot_is_synced(tmp_path, monkeypatch):
    store = holders.RecordStore(str(tmp_path))
    synced = _count_fsyncs(monkeypatch)
    rec = holders.Record('v1', 'a1', 'ro')
    store.save(rec)
    assert len(synced) == 1
    rec.holders = [holders.Holder.me()]
    store.save(rec, durable=False)
    assert len(synced) == 1
    assert store.load('v1') == rec          # seen at once all the same


def test_warm_reads_change_holders_without_syncing(
        make_host, cinder, volume, monkeypatch):
    # a warm download joins and leaves the record: those saves describe
    # processes of this boot and skip the fsync (a third of their cost);
    # the attach and the detach, which must survive a crash, are synced
    host = make_host(cinder_plus_attach_grace_period=60)
    synced = _count_fsyncs(monkeypatch)
    with host.attach(cinder, volume, 'ro'):
        pass
    attached = len(synced)
    assert attached >= 3          # attaching, connection info, attached
    for _ in range(3):
        with host.attach(cinder, volume, 'ro'):
            assert len(host.records.load(volume.id).holders) == 1
    assert len(synced) == attached
    assert len(creates(cinder)) == 1
    host.release_idle(cinder, volume.id)
    assert len(synced) > attached
    assert cinder.attachments == {}


def test_volume_lock_is_polled_briefly_and_quietly(host, monkeypatch):
    # lockutils polls an external lock it cannot get; its default first
    # wait (10 ms, growing by 10 ms) made each collision of two downloads'
    # 1 ms joins cost 10 ms, and a reader oversleep an attach by up to 0.1 s
    asked = []
    real = holders.lockutils.lock

    def lock(name, **kwargs):
        asked.append(kwargs)
        return real(name, **kwargs)
    monkeypatch.setattr(holders.lockutils, 'lock', lock)
    with host.lock('v1'):
        pass
    assert asked[0]['external'] and asked[0]['delay'] <= 0.001
    assert asked[0]['do_log'] is False      # 4 debug lines per lock


def test_holder_identity_survives_pid_reuse():
    me = holders.Holder.me()
    assert me.alive()
    impostor = dataclasses.replace(me, start=me.start - 1)
    assert not impostor.alive()
    assert not dead_holder().alive()


def test_unusable_state_dir_is_a_clear_error(tmp_path):
    from glance_store import exceptions as gs_exc
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(gs_exc.BadStoreConfiguration,
                       match='cinder_plus_state_dir'):
        holders.RecordStore(str(blocker))


def test_lingering_attachment_is_detached_at_exit(make_host, cinder, volume):
    host = make_host(cinder_plus_attach_grace_period=60)
    with host.attach(cinder, volume, 'ro'):
        pass
    assert len(cinder.attachments) == 1
    host.warm.close()           # what atexit runs
    assert cinder.attachments == {}
    assert fakes.FakeConnection.connected == {}


def test_target_is_opened_once_and_closed_on_every_exit(
        host, cinder, volume, monkeypatch):
    """Handle-only protocols: one open per holder, closed before release."""
    events = []
    monkeypatch.setattr(fakes.FakeConnection, 'open_target',
                        lambda self, info, writable: events.append('open')
                        or object())
    monkeypatch.setattr(fakes.FakeConnection, 'close_target',
                        lambda self, target: events.append('close'))
    with host.attach(cinder, volume, 'ro') as a:
        assert a.target is a.target
    assert events == ['open', 'close']
    with pytest.raises(RuntimeError):
        with host.attach(cinder, volume, 'ro') as a:
            a.target
            raise RuntimeError('transfer failed')
    assert events == ['open', 'close'] * 2
    with host.attach(cinder, volume, 'ro'):
        pass                        # never opened: nothing to close
    assert events == ['open', 'close'] * 2
    assert cinder.attachments == {}
