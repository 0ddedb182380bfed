"""Liveness, and the one reconciler for this host's leftovers."""

import dataclasses
import datetime
import io
import os
import subprocess
import time

import pytest

from glance_cinder_store import heal
from glance_cinder_store import holders
from tests.unit import fakes


def connected():
    return fakes.FakeConnection.connected


def reconcile(store, cinder, **kwargs):
    heal_store_volumes = heal.store_volumes
    try:
        heal.store_volumes = lambda store, volumes, uploads_of=None: [
            cinder.get(v) for v in list(cinder.volumes)
            if uploads_of in (None, cinder.volumes[v].metadata.get(
                holders.UPLOAD_HOST))]
        return heal.Healer(store).reconcile(cinder, **kwargs)
    finally:
        heal.store_volumes = heal_store_volumes


def dead_process():
    proc = subprocess.Popen(['sleep', '60'])
    me = holders.Process.of(proc.pid)
    proc.kill()
    proc.wait()
    return me


def mark_of(process, beat_age=0):
    now = datetime.datetime.now(datetime.timezone.utc).replace(
        microsecond=0)
    beat = now - datetime.timedelta(seconds=beat_age)
    return holders.UploadMark(process, beat - datetime.timedelta(days=3),
                              beat)


# -- liveness ----------------------------------------------------------------

def test_verdicts():
    me = holders.Process.of(os.getpid())
    assert me.verdict() == holders.ALIVE
    assert dead_process().verdict() == holders.DEAD
    assert dataclasses.replace(me, start=me.start - 1).verdict() == (
        holders.DEAD)
    # cannot be judged from here: unknown, never dead
    assert dataclasses.replace(me, host='elsewhere').verdict() == (
        holders.UNKNOWN)
    assert dataclasses.replace(me, pidns='1').verdict() == holders.UNKNOWN


def test_reboot_makes_every_earlier_process_dead(monkeypatch):
    me = holders.Process.of(os.getpid())
    holder = holders.Holder.me()
    monkeypatch.setenv(holders.BOOT_ID_ENV, 'a-new-boot')
    assert me.verdict() == holders.DEAD
    assert not holder.alive()
    assert holders.Process.of(os.getpid()).verdict() == holders.ALIVE


def test_old_holder_records_still_load(tmp_path):
    records = holders.RecordStore(str(tmp_path))
    me = holders.Process.of(os.getpid())
    with open(records.path('v1'), 'w') as f:
        f.write('{"volume_id": "v1", "attachment_id": "a1", "mode": "ro", '
                '"state": "attached", "holders": [{"pid": %d, "start": %d, '
                '"token": "t"}]}' % (me.pid, me.start))
    assert records.load('v1').holders[0].alive()


def test_upload_mark_round_trip_and_verdicts():
    mark = holders.UploadMark.mine()
    text = mark.format()
    assert len(text) < 255
    assert holders.UploadMark.parse(text) == mark
    assert mark.verdict() == holders.ALIVE
    # age alone never condemns an upload of this host
    assert mark_of(mark.uploader, beat_age=10 ** 6).verdict(60) == (
        holders.ALIVE)
    assert mark_of(dead_process()).verdict() == holders.DEAD
    far = dataclasses.replace(mark.uploader, host='elsewhere')
    assert mark_of(far, beat_age=10 ** 6).verdict(0) == holders.UNKNOWN
    assert mark_of(far, beat_age=30).verdict(600) == holders.UNKNOWN
    assert mark_of(far, beat_age=601).verdict(600) == holders.DEAD
    with pytest.raises(ValueError):
        holders.UploadMark.parse('nonsense')


def test_heartbeat_refreshes_and_stops():
    published = []
    beat = holders.Heartbeat(holders.UploadMark.mine(), published.append,
                             0.05).start()
    for _ in range(100):
        if len(published) >= 2:
            break
        time.sleep(0.02)
    beat.stop()
    seen = len(published)
    assert seen >= 2
    assert holders.UploadMark.parse(published[-1]).uploader.pid == (
        os.getpid())
    time.sleep(0.15)
    assert len(published) == seen


def test_store_upload_mark_carries_identity(store, cinder):
    seen = []
    real = cinder.create

    def create(size_gb, name, metadata, volume_type):
        seen.append(metadata[holders.UPLOAD_MARK])
        return real(size_gb, name, metadata, volume_type)
    cinder.create = create
    store.add('img-1', io.BytesIO(b'x' * 1000), 1000, 'sha256')
    mark = holders.UploadMark.parse(seen[0])
    assert mark.uploader == holders.Process.of(os.getpid())


# -- the reconciler ----------------------------------------------------------

def _upload_volume(cinder, process, attach_with=None, host=None):
    vol = cinder.create(1, 'image-dead', {
        'glance_image_id': 'img-dead',
        holders.UPLOAD_MARK: mark_of(process).format()}, 'gold-type')
    return cinder.get(vol.id)


def test_dead_upload_of_this_host_is_detached_then_deleted(store, cinder):
    dead = dead_process()
    vol = _upload_volume(cinder, dead)
    host = store.attachments
    # the dead uploader's attachment, as its record left it
    att = cinder.attachment_create(vol.id, 'rw')['id']
    upd = cinder.attachment_update(att, host.connector_properties())
    device = fakes.FakeConnection(upd.connection_info).connect()
    cinder.attachment_complete(att)
    host.records.save(holders.Record(
        vol.id, att, 'rw', state=holders.ATTACHED,
        connection_info=upd.connection_info, device_info=device,
        holders=[holders.Holder(dead.pid, dead.start, dead.host, dead.boot,
                                dead.pidns, 't')]))
    dry = reconcile(store, cinder, dry_run=True)
    assert {f.outcome for f in dry} == {'would detach', 'would delete'}
    assert vol.id in cinder.volumes and att in cinder.attachments
    done = reconcile(store, cinder)
    assert ('delete volume', 'deleted') in [(f.action, f.outcome)
                                            for f in done]
    assert cinder.volumes == {} and cinder.attachments == {}
    assert connected() == {}
    assert heal.dead_uploads(store.store_conf.cinder_plus_state_dir) == {
        'img-dead': vol.id}


def test_upload_killed_mid_attach_is_undone_and_deleted(store, cinder):
    # killed between the attachment's create and its record: Cinder's
    # volume view does not list the attachment, yet it blocks the delete
    vol = _upload_volume(cinder, dead_process())
    att = cinder.attachment_create(
        vol.id, 'rw', store.attachments.connector_properties())['id']
    assert cinder.get(vol.id).attachments == []
    done = reconcile(store, cinder)
    assert ('delete volume', 'deleted') in [(f.action, f.outcome)
                                            for f in done]
    assert att not in cinder.attachments and vol.id not in cinder.volumes


def test_other_hosts_unfinished_attach_is_kept(store, cinder):
    far = dataclasses.replace(dead_process(), host='elsewhere')
    vol = _upload_volume(cinder, far)
    cinder.volumes[vol.id].metadata[holders.UPLOAD_MARK] = mark_of(
        far, beat_age=100).format()
    # 'attaching' may have a device on that host: left alone
    att = cinder.attachment_create(vol.id, 'rw', {'host': 'elsewhere'})['id']
    done = reconcile(store, cinder, stale_after=1)
    assert [f.action for f in done if f.volume_id == vol.id] == ['keep']
    assert att in cinder.attachments and vol.id in cinder.volumes
    # only reserved (never connected anywhere): undone, volume deleted
    cinder.attachment_delete(att)
    cinder.attachment_create(vol.id, 'rw')
    done = reconcile(store, cinder, stale_after=1)
    assert vol.id not in cinder.volumes and cinder.attachments == {}


def test_live_or_unknown_uploads_are_never_deleted(store, cinder):
    me = holders.Process.of(os.getpid())
    alive = _upload_volume(cinder, me)
    far = _upload_volume(cinder, dataclasses.replace(me, host='elsewhere'))
    garbled = cinder.create(1, 'image-g', {holders.UPLOAD_MARK: 'x=1'},
                            'gold-type')
    findings = reconcile(store, cinder, stale_after=0)
    assert set(cinder.volumes) == {alive.id, far.id, garbled.id}
    assert [(f.volume_id, f.action) for f in findings] == [
        (garbled.id, 'keep')]


def test_stale_heartbeat_of_another_host_condemns_unattached_only(
        store, cinder):
    me = holders.Process.of(os.getpid())
    far = dataclasses.replace(me, host='elsewhere')
    vol = cinder.create(1, 'image-far', {
        holders.UPLOAD_MARK: mark_of(far, beat_age=3600).format()},
        'gold-type')
    att = cinder.attachment_create(vol.id, 'rw')['id']
    cinder.attachment_update(att, {'host': 'elsewhere'})
    findings = reconcile(store, cinder, stale_after=600)
    assert [(f.action, f.outcome[:16]) for f in findings] == [
        ('keep', 'still attached (')]
    assert vol.id in cinder.volumes and att in cinder.attachments
    cinder.attachment_delete(att)
    findings = reconcile(store, cinder, stale_after=600)
    assert [f.outcome for f in findings] == ['deleted']


def test_failed_disconnect_keeps_attachment_and_record(
        store, cinder, monkeypatch):
    vol = cinder.get(cinder.create(1, 'image-x', {}, 'gold-type').id)
    host = store.attachments

    def broken(self, device_info):
        raise OSError('device busy')
    monkeypatch.setattr(fakes.FakeConnection, 'disconnect', broken)
    with host.attach(cinder, vol, 'ro'):    # the read itself succeeds
        pass
    record = host.records.load(vol.id)
    assert record.state == holders.DETACHING and not record.holders
    assert list(cinder.attachments) == [record.attachment_id]
    monkeypatch.undo()
    findings = reconcile(store, cinder)
    assert [f.outcome for f in findings] == ['detached']
    assert cinder.attachments == {} and host.records.volume_ids() == []


def test_failed_attachment_delete_is_never_joined(store, cinder):
    vol = cinder.get(cinder.create(1, 'image-x', {}, 'gold-type').id)
    host = store.attachments
    from glance_store import exceptions
    cinder.fail['attachment_delete'] = exceptions.BackendException('503')
    with host.attach(cinder, vol, 'ro'):
        pass
    record = host.records.load(vol.id)
    assert record.state == holders.DETACHED and not record.holders
    assert connected() == {}                # the device is gone
    del cinder.fail['attachment_delete']
    # the next reader does not join the gone device: it finishes the
    # detach and attaches anew
    with host.attach(cinder, vol, 'ro') as attached:
        assert attached.target == vol.path
        assert connected() == {vol.path: 1}
    assert cinder.attachments == {}


def _passes(monkeypatch, missed=None):
    """Record each pass's ``everything`` instead of reconciling.

    ``missed``: what each full listing finds that the query misses.
    """
    calls = []

    def reconcile(self, volumes, everything):
        calls.append(everything)
        if everything and missed is not None:
            self.missed_by_query = list(missed)
        return []
    monkeypatch.setattr(heal.Healer, 'reconcile', reconcile)
    return calls


def _age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_periodic_pass_runs_once_per_interval_host_wide(
        store, cinder, monkeypatch):
    calls = _passes(monkeypatch)
    first = heal.Periodic(store, 60)
    second = heal.Periodic(store, 60)
    assert first.run_once() == []
    assert second.run_once() is None        # ran just now on this host
    assert calls == [True]


def test_periodic_passes_list_every_volume_only_now_and_then(
        store, cinder, monkeypatch):
    """Between two full listings a pass asks for this host's uploads."""
    calls = _passes(monkeypatch)
    periodic = heal.Periodic(store, 0)
    for _ in range(3):
        periodic.run_once()
    assert calls == [True, False, False]
    _age(periodic._stamp('listed'), heal.FULL_LISTING_EVERY + 1)
    periodic.run_once()
    assert calls == [True, False, False, True]


@pytest.mark.parametrize('missed,gap', [
    ([], heal.FULL_LISTING_CLEAN_EVERY),
    (['old-upload'], heal.FULL_LISTING_EVERY)])
def test_full_listings_are_rare_once_they_find_nothing_the_query_misses(
        store, cinder, monkeypatch, missed, gap):
    calls = _passes(monkeypatch, missed)
    periodic = heal.Periodic(store, 0)
    periodic.run_once()
    _age(periodic._stamp('listed'), heal.FULL_LISTING_EVERY + 1)
    periodic.run_once()
    _age(periodic._stamp('listed'), gap + 1)
    periodic.run_once()
    if missed:      # an upgrade under way: every ten minutes
        assert calls == [True, True, True]
    else:           # the filtered query sees it all: every six hours
        assert calls == [True, False, True]


def test_marks_of_this_host_without_its_name_are_what_the_query_misses(
        store, cinder, monkeypatch):
    me = holders.Process.of(os.getpid())
    old = _upload_volume(cinder, me)            # an earlier version's mark
    named = cinder.create(1, 'image-named', dict(
        holders.UploadMark.mine().metadata(), glance_image_id='i2'),
        'gold-type')
    elsewhere = cinder.create(1, 'image-other', {
        holders.UPLOAD_MARK: mark_of(holders.Process(
            1, 1, 'other-host', 'boot', 'ns')).format()}, 'gold-type')
    assert heal.missed_by_query(
        [cinder.get(v.id) for v in (old, named, elsewhere)],
        holders.host_name()) == [old.id]
    monkeypatch.setattr(heal, 'store_volumes', lambda store, volumes,
                        uploads_of=None: [cinder.get(v) for v in
                                          list(cinder.volumes)])
    healer = heal.Healer(store)
    healer.reconcile(cinder, everything=False)
    assert healer.missed_by_query is None       # a filtered pass cannot tell
    healer.reconcile(cinder)
    assert healer.missed_by_query == [old.id]


def test_a_pass_of_this_host_asks_cinder_for_its_uploads_only(
        store, cinder, monkeypatch):
    asked = []
    monkeypatch.setattr(cinder, 'list_all', lambda metadata=None: asked.append(
        metadata) or [], raising=False)
    healer = heal.Healer(store)
    healer.reconcile(cinder, everything=False)
    healer.reconcile(cinder)
    healer.reconcile(cinder, everything=False, untracked=True)
    healer.reconcile(cinder, everything=False, stale_after=600)
    assert asked == [{holders.UPLOAD_HOST: holders.host_name()},
                     None, None, None]


def test_an_upload_names_its_host_beside_its_mark(store, cinder, context):
    created = []
    real = cinder.create

    def create(size_gb, name, metadata, volume_type):
        created.append(dict(metadata))
        return real(size_gb, name, metadata, volume_type)
    cinder.create = create
    store.add('img-1', io.BytesIO(b'x' * 1000), 1000, 'sha256',
              context=context)
    assert created[0][holders.UPLOAD_HOST] == holders.host_name()
    assert holders.UPLOAD_MARK in created[0]
    volume = next(iter(cinder.volumes.values()))
    assert holders.UPLOAD_HOST not in volume.metadata    # finished
    assert holders.UPLOAD_MARK not in volume.metadata


# -- device identity ---------------------------------------------------------

def test_a_replaced_device_is_never_joined(make_store, cinder):
    store = make_store(cinder_plus_attach_grace_period=60)
    vol = cinder.get(cinder.create(1, 'image-x', {}, 'gold-type').id)
    host = store.attachments
    with host.attach(cinder, vol, 'ro'):
        pass                                # lingers, shared
    # another disk now sits where the device was
    with open(vol.path + '.other', 'wb') as f:
        f.truncate(os.path.getsize(vol.path))
    os.replace(vol.path + '.other', vol.path)
    from glance_store import exceptions
    with pytest.raises(exceptions.BackendException,
                       match='no longer the one connected'):
        with host.attach(cinder, vol, 'ro'):
            pass
    host.warm.close()


def test_loop_device_must_be_backed_by_the_volume():
    from glance_cinder_store.connectors import base
    local = base.LocalConnection.__new__(base.LocalConnection)
    ok = {'backing_file': '/srv/cinder/volume-abc'}
    assert local.mismatch(ok, 'abc') is None
    assert 'volume-abc' in local.mismatch(ok, 'def')
    assert 'deleted' in local.mismatch(
        {'backing_file': '/srv/cinder/volume-abc (deleted)'}, 'abc')


def test_a_failed_upload_it_could_not_delete_is_marked_for_the_healer(
        store, cinder):
    from glance_store import exceptions
    cinder.fail['delete'] = exceptions.BackendException('503')
    with pytest.raises(exceptions.Invalid):
        store.add('img-f', io.BytesIO(b'x' * 10), 20, 'sha256')
    (vol,) = cinder.volumes.values()
    mark, _ = holders.upload_mark_of(vol)
    assert mark.failed and mark.verdict() == holders.DEAD
    del cinder.fail['delete']
    findings = reconcile(store, cinder)
    assert [f.outcome for f in findings] == ['deleted']
    assert cinder.volumes == {}


def test_a_lingering_attachment_of_an_earlier_boot_is_stale(
        make_store, cinder, monkeypatch):
    store = make_store(cinder_plus_attach_grace_period=600)
    vol = cinder.get(cinder.create(1, 'image-x', {}, 'gold-type').id)
    monkeypatch.setenv(holders.BOOT_ID_ENV, 'boot-1')
    with store.attachments.attach(cinder, vol, 'ro'):
        pass
    assert reconcile(store, cinder) == []           # lingering: kept
    monkeypatch.setenv(holders.BOOT_ID_ENV, 'boot-2')
    assert [f.outcome for f in reconcile(store, cinder)] == ['detached']
    assert cinder.attachments == {}
    store.attachments.warm.forget(vol.id)


def _kept_by_a_dead_process(store, cinder):
    """A lingering read-only attachment that no live process keeps warm."""
    vol = cinder.get(cinder.create(1, 'image-x', {}, 'gold-type').id)
    with store.attachments.attach(cinder, vol, 'ro'):
        pass
    store.attachments.warm.forget(vol.id)    # as if its keeper was killed
    return vol


def test_an_idle_attachment_another_host_wants_is_let_go(make_store, cinder):
    """Its keeper may have died: the pass answers the request instead."""
    store = make_store(cinder_plus_attach_grace_period=600)
    vol = _kept_by_a_dead_process(store, cinder)
    assert reconcile(store, cinder) == []           # lingering: kept
    cinder.request_release(vol.id)
    found = reconcile(store, cinder, dry_run=True)
    assert [(f.why, f.outcome) for f in found] == [
        ('idle here, wanted by another host', 'would detach')]
    assert len(cinder.attachments) == 1
    found = reconcile(store, cinder)
    assert [f.outcome for f in found] == ['detached']
    assert cinder.attachments == {}
    assert store.attachments.records.load(vol.id) is None


def test_a_wanted_attachment_still_read_here_is_kept(make_store, cinder):
    store = make_store(cinder_plus_attach_grace_period=600)
    vol = cinder.get(cinder.create(1, 'image-x', {}, 'gold-type').id)
    with store.attachments.attach(cinder, vol, 'ro'):
        cinder.request_release(vol.id)
        assert reconcile(store, cinder) == []
        assert len(cinder.attachments) == 1
    store.attachments.release_idle(cinder, vol.id)


def test_each_store_asks_only_about_its_own_volume_type(make_store, cinder):
    """Stores share the state folder: one GET per attachment, not per store."""
    gold = make_store(cinder_plus_attach_grace_period=600)
    vol = _kept_by_a_dead_process(gold, cinder)
    cinder.request_release(vol.id)
    other = make_store(cinder_plus_attach_grace_period=600,
                       cinder_volume_type='silver-type')
    assert reconcile(other, cinder) == []
    assert len(cinder.attachments) == 1
    assert [f.outcome for f in reconcile(gold, cinder)] == ['detached']
