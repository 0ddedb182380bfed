"""The optional volume pool: claimed by small adds, refilled, never leaked."""

import io
import os
import time

from glance_store import exceptions
from glance_store import location as gs_location
from oslo_utils import units
import pytest

from glance_cinder_store import heal
from glance_cinder_store import holders
from glance_cinder_store import pool
from glance_cinder_store import store as store_mod
from tests.unit import test_heal

IMAGE_ID = '0d6b1c9e-7f1e-4d1a-8a57-5b0e1f3c2a44'


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.01)


def pool_volumes(cinder):
    return [v for v in cinder.volumes.values() if pool.is_pool_volume(v)]


@pytest.fixture(autouse=True)
def refill_at_once(monkeypatch):
    """Refills wait for no quiet second (the test that says so aside)."""
    monkeypatch.setattr(pool, 'REFILL_QUIET', 0)


@pytest.fixture
def pooled(make_store, cinder):
    made = []

    def make(size=2, **overrides):
        overrides.setdefault('cinder_plus_upload_heartbeat_interval', 0)
        store = make_store(cinder_plus_volume_pool_size=size, **overrides)
        made.append(store)
        if store._pool is not None:
            wait_until(lambda: len(store._pool) == size)
        return store
    yield make
    for store in made:
        store.close()


def test_pool_is_off_by_default(store, cinder):
    assert store._pool is None
    store.add(IMAGE_ID, io.BytesIO(b'x' * 10), 10, 'sha256')
    assert [c[0] for c in cinder.calls].count('create') == 1
    assert pool_volumes(cinder) == []


def test_the_pool_is_refilled_once_the_host_is_quiet(pooled, cinder,
                                                     context, monkeypatch):
    """A burst of uploads draws the pool down; the quiet after refills it."""
    monkeypatch.setattr(pool, 'REFILL_QUIET', 0.3)
    store = pooled(size=1)

    def creates():
        return [c[0] for c in cinder.calls].count('create')
    before = creates()
    with store.attachments.activity.running():     # another transfer
        store.add(IMAGE_ID, io.BytesIO(b'abc'), 3, 'sha256',
                  context=context)
        time.sleep(0.6)
        assert creates() == before and len(store._pool) == 0
    wait_until(lambda: len(store._pool) == 1)
    assert creates() == before + 1


def test_a_busy_host_refills_its_pool_after_a_while(pooled, cinder, context,
                                                    monkeypatch):
    monkeypatch.setattr(pool, 'REFILL_QUIET', 0.2)
    monkeypatch.setattr(pool, 'REFILL_WAIT_MAX', 0.5)
    store = pooled(size=1)
    with store.attachments.activity.running():     # busy for good
        store.add(IMAGE_ID, io.BytesIO(b'abc'), 3, 'sha256',
                  context=context)
        wait_until(lambda: len(store._pool) == 1)


def test_pool_volumes_are_marked_for_the_healer(pooled, cinder):
    store = pooled(size=2)
    vols = pool_volumes(cinder)
    assert len(vols) == 2
    for vol in vols:
        assert vol.volume_type == 'gold-type' and vol.size == 1
        assert vol.metadata[pool.POOL_MARK] == 'gold'
        mark, error = holders.upload_mark_of(vol)
        assert error is None and mark.verdict() == holders.ALIVE
        assert 'glance_image_id' not in vol.metadata
    store.close()
    assert cinder.volumes == {}


def test_add_claims_a_pool_volume_and_the_pool_is_refilled(pooled, cinder,
                                                           context):
    store = pooled(size=2)
    ready = {v.id for v in pool_volumes(cinder)}
    cinder.calls.clear()
    url, size, _, _, _ = store.add(IMAGE_ID, io.BytesIO(b'abc' * 100), 300,
                                   'sha256', context=context)
    image_vol = next(v for v in cinder.volumes.values()
                     if v.name == 'image-%s' % IMAGE_ID)
    assert image_vol.id in ready
    assert url == 'cinder://gold/%s' % image_vol.id
    # no create, no attach: one update renames it with its final metadata
    calls = [c for c in cinder.calls if image_vol.id in c]
    assert [c[0] for c in calls] == ['rename', 'set_readonly'], calls
    assert ('rename', image_vol.id, 'image-%s' % IMAGE_ID) in cinder.calls
    # the image volume is an ordinary one: its metadata replaced, read-only
    assert image_vol.metadata == {'glance_image_id': IMAGE_ID,
                                  'image_size': '300',
                                  'image_owner': 'proj-1'}
    assert image_vol.readonly and image_vol.status == 'available'
    wait_until(lambda: len(store._pool) == 2)
    # the refill started once the add had let go of the volume
    names = [c[0] for c in cinder.calls]
    assert names.index('attachment_delete') < names.index('create')
    assert len(pool_volumes(cinder)) == 2
    assert all(v.status == 'in-use' for v in pool_volumes(cinder))
    store.close()
    assert list(cinder.volumes) == [image_vol.id]


def test_pool_volumes_are_attached_ahead_of_time(pooled, cinder):
    store = pooled(size=2)
    records = store.attachments.records
    for vol in pool_volumes(cinder):
        assert vol.status == 'in-use'
        record = records.load(vol.id)
        assert record.mode == 'rw' and record.state == holders.ATTACHED
        assert [h.pid for h in record.holders] == [os.getpid()]
    store.close()
    assert cinder.volumes == {} and records.volume_ids() == []


def test_a_pool_volume_is_offered_once_cinder_completed_its_attachment(
        pooled, cinder, monkeypatch):
    """The complete goes on in the background: the pool waits for it."""
    complete = cinder.attachment_complete

    def slow_complete(attachment_id):
        time.sleep(0.3)
        complete(attachment_id)
    monkeypatch.setattr(cinder, 'attachment_complete', slow_complete)
    store = pooled(size=1)
    (vol,) = pool_volumes(cinder)
    assert vol.status == 'in-use' and len(vol.attachments) == 1
    store.close()


def test_claimed_volume_of_a_failed_add_is_deleted(pooled, cinder, context):
    store = pooled(size=1)

    class Broken(io.BytesIO):
        def read(self, n=-1):
            raise IOError('client went away')
    with pytest.raises(IOError):
        store.add(IMAGE_ID, Broken(), 100, 'sha256', context=context)
    store.close()
    assert cinder.volumes == {}


def test_a_failed_final_rename_fails_the_add_and_deletes_the_volume(
        pooled, cinder, context):
    store = pooled(size=1)
    (ready,) = pool_volumes(cinder)
    cinder.fail['rename'] = exceptions.BackendException('Cinder said no')
    with pytest.raises(exceptions.BackendException):
        store.add(IMAGE_ID, io.BytesIO(b'x' * 10), 10, 'sha256',
                  context=context)
    assert ready.id not in cinder.volumes
    del cinder.fail['rename']
    store.close()
    assert cinder.volumes == {}
    assert store.attachments.records.volume_ids() == []


def test_a_pool_volume_of_a_crashed_add_is_a_pool_volume(
        pooled, cinder, context, monkeypatch):
    """Mid-write, the claimed volume still carries the pool's name/marks."""
    store = pooled(size=1)
    (ready,) = pool_volumes(cinder)
    seen = {}

    def write_image(*a, **k):
        vol = cinder.volumes[ready.id]
        seen.update(name=vol.name, metadata=dict(vol.metadata))
        raise IOError('killed')
    monkeypatch.setattr(store_mod.transfer, 'write_image', write_image)
    with pytest.raises(IOError):
        store.add(IMAGE_ID, io.BytesIO(b'x'), 1, 'sha256', context=context)
    assert seen['name'].startswith('glance-cinder-store-pool-gold-')
    assert seen['metadata'][pool.POOL_MARK] == 'gold'
    assert 'glance_image_id' not in seen['metadata']
    store.close()


def test_images_above_one_gib_do_not_claim(pooled, cinder, context,
                                           monkeypatch):
    store = pooled(size=1)
    monkeypatch.setattr(store_mod.transfer, 'write_image',
                        lambda *a, **k: store_mod.transfer.WriteResult(
                            a[2], 'm', 'h', 0))
    cinder.calls.clear()
    store.add(IMAGE_ID, io.BytesIO(b''), units.Gi + 1, 'sha256',
              context=context)
    assert not [c for c in cinder.calls if c[0] == 'rename']
    assert len(pool_volumes(cinder)) == 1
    store.close()


def test_no_pool_without_service_credentials(pooled, cinder):
    store = pooled(size=2, cinder_store_user_name=None,
                   cinder_store_password=None)
    assert store._pool is None
    assert cinder.volumes == {}


def test_pool_volumes_are_never_read_or_deleted_through_glance(
        pooled, cinder, context):
    store = pooled(size=1)
    (vol,) = pool_volumes(cinder)
    gs_location.register_scheme_backend_map({
        'cinder': {'gold': {'store': store,
                            'location_class': store_mod.StoreLocation,
                            'store_entry': 'cinder_plus'}}})
    loc = gs_location.get_location_from_uri_and_backend(
        'cinder://gold/%s' % vol.id, 'gold', conf=store.conf)
    with pytest.raises(exceptions.NotFound):
        store.get(loc, context=context)
    with pytest.raises(exceptions.NotFound):
        store.delete(loc, context=context)
    assert vol.id in cinder.volumes


def test_marks_are_refreshed(pooled, cinder):
    store = pooled(size=1)
    (vol,) = pool_volumes(cinder)
    before = holders.upload_mark_of(vol)[0]
    time.sleep(1.1)
    store._pool._refresh_marks()
    after = holders.upload_mark_of(cinder.volumes[vol.id])[0]
    assert after.beat > before.beat and after.since == before.since


def test_the_healer_deletes_the_pool_of_a_dead_process(store, cinder):
    dead = test_heal.dead_process()
    left = cinder.create(1, 'glance-cinder-store-pool-gold-x', {
        pool.POOL_MARK: 'gold',
        holders.UPLOAD_MARK: test_heal.mark_of(dead).format()}, 'gold-type')
    findings = test_heal.reconcile(store, cinder)
    assert [(f.volume_id, f.action, f.outcome) for f in findings] == [
        (left.id, 'delete volume', 'deleted')]
    assert 'pool volume' in findings[0].why
    assert cinder.volumes == {}
    assert heal.dead_uploads(store.store_conf.cinder_plus_state_dir) == {}


@pytest.mark.parametrize('failing,error,then', [
    ('create', exceptions.StorageFull('quota'), 'create'),
    # a refused complete: the volume is detached and deleted, not offered
    ('attachment_complete', exceptions.BackendException('no'), 'delete'),
])
def test_a_failed_refill_backs_off_and_recovers(make_store, cinder, failing,
                                                error, then):
    cinder.fail[failing] = error
    store = make_store(cinder_plus_volume_pool_size=1,
                       cinder_plus_upload_heartbeat_interval=0)
    try:
        wait_until(lambda: [c for c in cinder.calls if c[0] == then])
        assert len(store._pool) == 0
        assert cinder.attachments == {} and cinder.volumes == {}
        assert store.attachments.records.volume_ids() == []
        del cinder.fail[failing]
        store._pool._wake.set()
        wait_until(lambda: len(store._pool) == 1)
        assert pool_volumes(cinder)[0].status == 'in-use'
    finally:
        store.close()
    assert cinder.volumes == {}
