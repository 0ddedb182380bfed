"""Store behaviour against a fake Cinder (files as volumes)."""

import hashlib
import io
import os
import time

from glance_store import exceptions
from glance_store import location as gs_location
from oslo_utils import units
import pytest

from glance_cinder_store import store as store_mod
from tests.unit import conftest
from tests.unit import fakes

MiB = 1024 * 1024
IMAGE_ID = '4b7a7dd8-5b2c-4a5d-9c9c-0a9c2b0e6a11'


def data_of(size, seed=1):
    out = bytearray()
    block = hashlib.sha512(str(seed).encode()).digest()
    while len(out) < size:
        out += block
        block = hashlib.sha512(block).digest()
    return bytes(out[:size])


class Verifier:
    def __init__(self):
        self.updates = 0
        self.verified = False

    def update(self, data):
        self.updates += 1

    def verify(self):
        self.verified = True


def location_for(store, url):
    return gs_location.get_location_from_uri_and_backend(
        url, 'gold', conf=store.conf)


@pytest.fixture(autouse=True)
def scheme_map(store):
    gs_location.register_scheme_backend_map({
        'cinder': {'gold': {'store': store,
                            'location_class': store_mod.StoreLocation,
                            'store_entry': 'cinder_plus'}}})


def no_leaks(cinder):
    assert cinder.attachments == {}
    assert fakes.FakeConnection.connected == {}


def test_add_known_size_writes_metadata_and_readonly(store, cinder, context):
    data = data_of(3 * 1024 * 1024 + 17)
    verifier = Verifier()
    url, size, md5, multihash, meta = store.add(
        IMAGE_ID, io.BytesIO(data), len(data), 'sha256', context=context,
        verifier=verifier)
    (vol,) = cinder.volumes.values()
    assert url == 'cinder://gold/%s' % vol.id
    assert size == len(data)
    assert md5 == hashlib.md5(data).hexdigest()
    assert multihash == hashlib.sha256(data).hexdigest()
    assert meta == {'store': 'gold'}
    assert vol.name == 'image-%s' % IMAGE_ID
    assert vol.size == 1
    assert vol.volume_type == 'gold-type'
    assert vol.metadata == {'glance_image_id': IMAGE_ID,
                            'image_size': str(len(data)),
                            'image_owner': 'proj-1'}
    assert vol.readonly
    assert verifier.updates > 0 and not verifier.verified
    with open(vol.path, 'rb') as f:
        assert f.read(len(data)) == data
    no_leaks(cinder)


def test_add_marks_volume_while_uploading(store, cinder, context):
    seen = {}

    class Spy(io.BytesIO):
        def read(self, n=-1):
            (vol,) = cinder.volumes.values()
            seen.update(vol.metadata)
            return super().read(n)

    store.add(IMAGE_ID, Spy(b'x' * 10), 10, 'sha512', context=context)
    assert store_mod.UPLOAD_MARK in seen
    (vol,) = cinder.volumes.values()
    assert store_mod.UPLOAD_MARK not in vol.metadata


def test_add_four_value_call_is_still_answered(store, cinder, context):
    result = store.add(IMAGE_ID, io.BytesIO(b'abc'), 3, context=context)
    assert len(result) == 4
    assert result[2] == hashlib.md5(b'abc').hexdigest()


def test_add_size_rounds_up_to_gib(store, cinder, context, monkeypatch):
    monkeypatch.setattr(store_mod.transfer, 'write_image',
                        lambda *a, **k: store_mod.transfer.WriteResult(
                            a[2], 'm', 'h', 0))
    store.add(IMAGE_ID, io.BytesIO(b''), units.Gi + 1, 'sha512',
              context=context)
    (vol,) = cinder.volumes.values()
    assert vol.size == 2


@pytest.mark.parametrize('declared,actual', [(100, 99), (100, 101)])
def test_add_size_mismatch_deletes_volume(store, cinder, context, declared,
                                          actual):
    with pytest.raises(exceptions.Invalid):
        store.add(IMAGE_ID, io.BytesIO(b'a' * actual), declared, 'sha512',
                  context=context)
    assert cinder.volumes == {}
    no_leaks(cinder)


def test_add_unknown_size_grows_volume(make_store, cinder, context,
                                       monkeypatch):
    store = make_store(cinder_do_extend_attached=True,
                       cinder_plus_extend_factor=2.0)
    monkeypatch.setattr(type(store.clients), 'online_extend_supported', True)
    # Pretend a GiB is 1 MiB so growth is cheap to test.
    monkeypatch.setattr(store_mod.units, 'Gi', 1024 * 1024)
    monkeypatch.setattr(fakes.units, 'Gi', 1024 * 1024)
    data = data_of(5 * 1024 * 1024 + 3)
    url, size, md5, _, _ = store.add(IMAGE_ID, io.BytesIO(data), 0, 'sha512',
                                     context=context)
    (vol,) = cinder.volumes.values()
    extends = [c for c in cinder.calls if c[0] == 'extend']
    assert [c[2] for c in extends] == [2, 4, 8]
    assert vol.metadata['image_size'] == str(len(data))
    assert size == len(data) and md5 == hashlib.md5(data).hexdigest()
    assert sum(1 for c in cinder.calls if c[0] == 'attachment_create') == 1
    with open(vol.path, 'rb') as f:
        assert f.read(len(data)) == data
    no_leaks(cinder)


def test_online_grow_waits_for_cinder_to_complete_the_attachment(
        make_store, cinder, context, monkeypatch):
    """Cinder extends only in-use volumes: not one still attaching."""
    store = make_store(cinder_do_extend_attached=True,
                       cinder_plus_extend_factor=2.0)
    monkeypatch.setattr(type(store.clients), 'online_extend_supported', True)
    monkeypatch.setattr(store_mod.units, 'Gi', 1024 * 1024)
    monkeypatch.setattr(fakes.units, 'Gi', 1024 * 1024)
    complete = cinder.attachment_complete

    def slowly(attachment_id):
        time.sleep(0.3)         # the first MiB is written long before
        complete(attachment_id)
    cinder.attachment_complete = slowly
    data = data_of(3 * 1024 * 1024)
    store.add(IMAGE_ID, io.BytesIO(data), 0, 'sha512', context=context)
    assert [c[2] for c in cinder.calls if c[0] == 'extend'] == [2, 4]
    no_leaks(cinder)


def test_online_grow_of_an_attachment_cinder_would_not_complete(
        make_store, cinder, context, monkeypatch):
    store = make_store(cinder_do_extend_attached=True)
    monkeypatch.setattr(type(store.clients), 'online_extend_supported', True)
    monkeypatch.setattr(store_mod.units, 'Gi', 1024 * 1024)
    monkeypatch.setattr(fakes.units, 'Gi', 1024 * 1024)
    cinder.fail['attachment_complete'] = exceptions.BackendException('x')
    with pytest.raises(exceptions.BackendException, match='not in-use'):
        store.add(IMAGE_ID, io.BytesIO(data_of(3 * 1024 * 1024)), 0,
                  'sha512', context=context)
    assert not [c for c in cinder.calls if c[0] == 'extend']
    assert cinder.volumes == {}
    no_leaks(cinder)


def _grow_until(needed_gb, factor=1.33, max_step=64):
    sizes = [1]
    while sizes[-1] < needed_gb:
        sizes.append(store_mod.grown_size_gb(
            sizes[-1], sizes[-1] * units.Gi + 1, factor, max_step))
    return sizes


def test_growth_factor_bounds_the_unused_part():
    assert _grow_until(10) == [1, 2, 3, 4, 5, 6, 7, 9, 11]
    assert _grow_until(10, factor=2) == [1, 2, 4, 8, 16]
    for needed in (6, 10, 50, 300):
        sizes = _grow_until(needed)
        # the last step was taken when the volume before it was full
        assert (sizes[-1] - sizes[-2]) / sizes[-1] <= 0.25
    assert _grow_until(200, factor=2, max_step=64)[-3:] == [128, 192, 256]
    # never less than what the data needs
    assert store_mod.grown_size_gb(1, 10 * units.Gi, 1.33, 64) == 10


def test_add_unknown_size_default_factor(make_store, cinder, context,
                                         monkeypatch):
    store = make_store(cinder_do_extend_attached=True)
    monkeypatch.setattr(type(store.clients), 'online_extend_supported', True)
    monkeypatch.setattr(store_mod.units, 'Gi', 1024 * 1024)
    monkeypatch.setattr(fakes.units, 'Gi', 1024 * 1024)
    data = data_of(5 * 1024 * 1024 + 3)
    store.add(IMAGE_ID, io.BytesIO(data), 0, 'sha512', context=context)
    extends = [c[2] for c in cinder.calls if c[0] == 'extend']
    assert extends == [2, 3, 4, 5, 6]
    assert sum(1 for c in cinder.calls if c[0] == 'attachment_create') == 1
    no_leaks(cinder)


def test_add_unknown_size_offline_reattaches(make_store, cinder, context,
                                             monkeypatch):
    store = make_store(cinder_do_extend_attached=False)
    monkeypatch.setattr(store_mod.units, 'Gi', 1024 * 1024)
    monkeypatch.setattr(fakes.units, 'Gi', 1024 * 1024)
    data = data_of(3 * 1024 * 1024)
    store.add(IMAGE_ID, io.BytesIO(data), 0, 'sha512', context=context)
    (vol,) = cinder.volumes.values()
    assert sum(1 for c in cinder.calls if c[0] == 'attachment_create') == 3
    with open(vol.path, 'rb') as f:
        assert f.read(len(data)) == data
    no_leaks(cinder)


def test_add_volume_error_on_create_deletes_it(store, cinder, context):
    cinder.status_after_create = 'error'
    with pytest.raises(exceptions.BackendException, match='error'):
        store.add(IMAGE_ID, io.BytesIO(b'x'), 1, 'sha512', context=context)
    assert cinder.volumes == {}


def test_add_volume_error_while_extending_deletes_it(make_store, cinder,
                                                     context, monkeypatch):
    store = make_store(cinder_do_extend_attached=True)
    monkeypatch.setattr(type(store.clients), 'online_extend_supported', True)
    monkeypatch.setattr(store_mod.units, 'Gi', 1024 * 1024)
    monkeypatch.setattr(fakes.units, 'Gi', 1024 * 1024)
    cinder.status_after_extend = 'error_extending'
    with pytest.raises(exceptions.BackendException):
        store.add(IMAGE_ID, io.BytesIO(data_of(2 * 1024 * 1024)), 0,
                  'sha512', context=context)
    assert cinder.volumes == {}
    no_leaks(cinder)


def test_add_attach_failure_deletes_attachment_and_volume(store, cinder,
                                                          context):
    fakes.FakeConnection.fail_connect = OSError('connect failed')
    with pytest.raises(OSError):
        store.add(IMAGE_ID, io.BytesIO(b'x'), 1, 'sha512', context=context)
    assert cinder.volumes == {}
    no_leaks(cinder)


def test_add_stream_error_midway_deletes_volume(store, cinder, context):
    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 1024 * 1024:
                raise IOError('client went away')
            return super().read(n)

    with pytest.raises(IOError):
        store.add(IMAGE_ID, Broken(data_of(3 * 1024 * 1024)), 3 * 1024 * 1024,
                  'sha512', context=context)
    assert cinder.volumes == {}
    no_leaks(cinder)


def test_add_same_image_into_a_second_store(make_store, cinder, context):
    """Import to all stores / copy-image: one volume per store's type."""
    gold = make_store()
    silver = make_store(cinder_volume_type='silver-type')
    data = data_of(MiB + 3)
    for store in (gold, silver):
        result = store.add(IMAGE_ID, io.BytesIO(data), len(data), 'sha512',
                           context=context)
        assert result[1] == len(data)
    vols = sorted(cinder.volumes.values(), key=lambda v: v.volume_type)
    assert [(v.name, v.volume_type) for v in vols] == [
        ('image-%s' % IMAGE_ID, 'gold-type'),
        ('image-%s' % IMAGE_ID, 'silver-type')]
    no_leaks(cinder)


@pytest.mark.parametrize('status', ['deleting', 'available', 'error'])
def test_add_retry_beside_an_old_volume_of_the_image(store, cinder, context,
                                                     status):
    """A failed upload's volume (being deleted, or left by a crash)."""
    old = cinder.create(1, 'image-%s' % IMAGE_ID,
                        {'glance_image_id': IMAGE_ID,
                         store_mod.UPLOAD_MARK: 'host=h pid=1'},
                        'gold-type')
    cinder.volumes[old.id].status = status
    url = store.add(IMAGE_ID, io.BytesIO(b'x'), 1, 'sha512',
                    context=context)[0]
    assert url != 'cinder://gold/%s' % old.id
    assert len(cinder.volumes) == 2
    no_leaks(cinder)


def test_add_costs_no_lookup_before_create(store, cinder, context):
    """No listing of image-<id> volumes: the first Cinder call creates."""
    cinder.calls.clear()        # configure_add's look at the volume type
    store.add(IMAGE_ID, io.BytesIO(b'x'), 1, 'sha512', context=context)
    assert cinder.calls[0][:3] == ('create', 1, 'image-%s' % IMAGE_ID)


def test_add_survives_a_complete_cinder_refuses(store, cinder, context):
    """The bytes went to a connected device: the image is good."""
    cinder.fail['attachment_complete'] = exceptions.BackendException('x')
    data = b'image bytes' * 1000
    loc = _stored(store, context, data)
    vol = cinder.volumes[loc.store_location.volume_id]
    assert vol.readonly and vol.metadata['image_size'] == str(len(data))
    del cinder.fail['attachment_complete']
    assert b''.join(store.get(loc, context=context)[0]) == data
    no_leaks(cinder)


def test_add_missing_volume_type_is_a_clear_error(make_store, cinder,
                                                  context):
    store = make_store(cinder_volume_type='nope')
    with pytest.raises(exceptions.StorageWriteDenied, match="'nope'"):
        store.add(IMAGE_ID, io.BytesIO(b'x'), 1, 'sha512', context=context)
    assert cinder.volumes == {}


def test_add_refuses_a_device_of_the_wrong_size(store, cinder, context,
                                                monkeypatch):
    monkeypatch.setattr(store_mod.transfer, 'device_size', lambda t: 5)
    with pytest.raises(exceptions.BackendException, match='another disk'):
        store.add(IMAGE_ID, io.BytesIO(b'x'), 1, 'sha512', context=context)
    assert cinder.volumes == {}
    no_leaks(cinder)


def _stored(store, context, data):
    url = store.add(IMAGE_ID, io.BytesIO(data), len(data), 'sha512',
                    context=context)[0]
    return location_for(store, url)


def test_get_whole_and_ranges(store, cinder, context):
    data = data_of(1024 * 1024 + 5)
    loc = _stored(store, context, data)
    it, size = store.get(loc, context=context)
    assert size == len(data) and b''.join(it) == data
    for offset, length in [(0, 1), (1, 10), (len(data) - 1, 1),
                           (256 * 1024 - 1, 2), (len(data) - 5, 100)]:
        it, _ = store.get(loc, offset=offset, chunk_size=length,
                          context=context)
        assert b''.join(it) == data[offset:offset + length]
    no_leaks(cinder)


def test_get_closed_early_detaches(store, cinder, context):
    loc = _stored(store, context, data_of(2 * 1024 * 1024))
    it, _ = store.get(loc, context=context)
    next(iter(it))
    assert cinder.attachments
    it.close()
    no_leaks(cinder)


def test_get_fails_before_glance_answers_when_attach_fails(
        store, cinder, context):
    """An attach failure is get()'s, not the body's (no 200, then EOF)."""
    loc = _stored(store, context, data_of(MiB))
    cinder.fail['attachment_create'] = exceptions.BackendException(
        'volume is attached elsewhere and not multiattach')
    with pytest.raises(exceptions.BackendException, match='multiattach'):
        store.get(loc, context=context)
    del cinder.fail['attachment_create']
    no_leaks(cinder)


def test_get_never_iterated_releases_when_dropped(store, cinder, context):
    loc = _stored(store, context, data_of(MiB))
    it, _ = store.get(loc, context=context)
    assert cinder.attachments
    del it
    no_leaks(cinder)


def test_get_without_image_size_uses_volume_size(store, cinder, context):
    loc = _stored(store, context, b'abc')
    (vol,) = cinder.volumes.values()
    del vol.metadata['image_size']
    assert store.get_size(loc, context=context) == units.Gi
    it, size = store.get(loc, offset=units.Gi - 2, context=context)
    assert b''.join(it) == b'\0\0'


def test_get_size_and_not_found(store, cinder, context):
    loc = _stored(store, context, b'abcd')
    assert store.get_size(loc, context=context) == 4
    (vol,) = list(cinder.volumes.values())
    store.delete(loc, context=context)
    assert cinder.volumes == {}
    with pytest.raises(exceptions.NotFound):
        store.get(loc, context=context)
    with pytest.raises(exceptions.NotFound):
        store.get_size(loc, context=context)
    with pytest.raises(exceptions.NotFound):
        store.delete(loc, context=context)


def test_get_in_per_user_mode_says_why_a_member_cannot_read(
        make_store, cinder, context):
    store = make_store(cinder_store_user_name=None)
    loc = _stored(store, context, b'abcd')
    (vol,) = cinder.volumes.values()
    # what another project's token gets from Cinder
    cinder.fail['get'] = exceptions.NotFound('volume %s: not found' % vol.id)
    with pytest.raises(exceptions.NotFound, match='per-user mode') as err:
        store.get(loc, context=context)
    assert vol.id in str(err.value) and 'proj-1' in str(err.value)


@pytest.mark.parametrize('service', [True, False])
def test_what_cinder_refused_is_remembered_per_store_credentials(
        tmp_path, monkeypatch, context, service):
    """The service user's refusals hold for every call of the store.

    A user's token may be allowed what the service user is not.
    """
    overrides = {} if service else {'cinder_store_user_name': None}
    store = store_mod.CinderStore(conftest.make_conf(tmp_path, **overrides),
                                  backend='gold')
    monkeypatch.setattr(store.clients, 'client', lambda *a, **k: object())
    one, other = store.volumes(context), store.volumes(context)
    assert (one.refusals is other.refusals) is service
    # the host's processes share Cinder's answers for the same credentials
    assert (one.service_key is not None) is service
    assert one.service_key == other.service_key


def test_the_service_key_names_credentials_and_cinder_not_secrets(tmp_path):
    def key(**overrides):
        conf = conftest.make_conf(tmp_path, **overrides)
        return store_mod.CinderStore(conf, backend='gold').clients.service_key
    assert key() == key(cinder_store_password='another secret')
    assert key() != key(cinder_store_project_name='other')
    assert key() != key(cinder_os_region_name='RegionTwo')
    assert len(key()) == 16


def test_get_size_other_errors_give_zero(store, cinder, context):
    loc = _stored(store, context, b'abcd')
    cinder.fail['get'] = exceptions.BackendException('boom')
    assert store.get_size(loc, context=context) == 0


def test_delete_waits_then_reports_in_use(store, cinder, context):
    loc = _stored(store, context, b'abcd')
    (vol,) = cinder.volumes.values()
    vol.attachments.append({'attachment_id': 'nova', 'host_name': 'cmp1'})
    with pytest.raises(exceptions.InUseByStore, match='cmp1'):
        store.delete(loc, context=context)
    assert vol.id in cinder.volumes


def test_delete_asks_other_hosts_to_let_go(store, cinder, context,
                                           monkeypatch):
    loc = _stored(store, context, b'abcd')
    (vol,) = cinder.volumes.values()
    warm_elsewhere = {'attachment_id': 'a9', 'host_name': 'other-host'}
    vol.attachments.append(warm_elsewhere)
    # the other host's warm cache notices the mark and detaches
    monkeypatch.setattr(store_mod.time, 'sleep',
                        lambda s: vol.attachments.remove(warm_elsewhere))
    store.delete(loc, context=context)
    assert ('request_release', vol.id) in cinder.calls
    assert cinder.volumes == {}


def test_delete_detaches_lingering_reader(make_store, cinder, context):
    store = make_store(cinder_plus_attach_grace_period=60)
    loc = _stored(store, context, b'abcd')
    it, _ = store.get(loc, context=context)
    assert b''.join(it) == b'abcd'
    assert cinder.attachments        # kept for the grace period
    store.delete(loc, context=context)
    assert cinder.volumes == {}
    no_leaks(cinder)


def test_delete_waits_for_a_download_here_then_detaches_it(
        make_store, cinder, context, monkeypatch):
    """The download ends during the delete's wait and leaves it warm."""
    store = make_store(cinder_plus_attach_grace_period=60)
    loc = _stored(store, context, b'abcd')
    reading, _ = store.get(loc, context=context)
    monkeypatch.setattr(store_mod.time, 'sleep',
                        lambda s: reading.close())
    store.delete(loc, context=context)
    assert cinder.volumes == {}
    no_leaks(cinder)


def _warmed_up(store, cinder, context, monkeypatch, data=b'abcd'):
    """Upload; wait for the warm-up; (location, fills it started)."""
    monkeypatch.setattr(store_mod, 'WARM_UP_QUIET', 0.01)
    fills = []
    monkeypatch.setattr(store.attachments.keepers, 'fill',
                        lambda vol, size, busy, done: fills.append(
                            (vol, size)))
    loc = _stored(store, context, data)
    if store._warm_ups is not None:
        assert store._warm_ups.wait_done(5)
    return loc, fills


def test_a_new_image_is_attached_and_filled_after_its_upload(
        make_store, cinder, context, monkeypatch):
    store = make_store(cinder_plus_attach_grace_period=60)
    cinder.multiattach = True
    loc, fills = _warmed_up(store, cinder, context, monkeypatch)
    vol_id = loc.store_location.volume_id
    assert fills == [(vol_id, 4)]
    assert [a[1] for a in cinder.attachments.values()] == ['ro']
    assert store.attachments.warm_volume(vol_id) is not None
    assert b''.join(store.get(loc, context=context)[0]) == b'abcd'
    creates = [c[2] for c in cinder.calls if c[0] == 'attachment_create']
    assert creates == ['rw', 'ro']          # the download attached nothing
    store.delete(loc, context=context)
    assert cinder.volumes == {}
    no_leaks(cinder)


@pytest.mark.parametrize('multiattach,on_device,overrides', [
    (False, True, {}),                  # a reader elsewhere would wait
    (True, False, {}),                  # librbd: no page cache to fill
    (True, True, {'cinder_plus_warm_after_upload': 0}),  # turned off
    (True, True, {'cinder_plus_keep_page_cache': False}),
    (True, True, {'cinder_plus_attach_grace_period': 0}),  # no warm cache
])
def test_no_warm_up_after_upload_when_it_could_not_help(
        make_store, cinder, context, monkeypatch, multiattach, on_device,
        overrides):
    overrides.setdefault('cinder_plus_attach_grace_period', 60)
    store = make_store(**overrides)
    cinder.multiattach = multiattach
    write = store._write
    monkeypatch.setattr(store, '_write', lambda *a, **k: (
        write(*a, **k)[0], on_device))
    loc, fills = _warmed_up(store, cinder, context, monkeypatch)
    assert fills == [] and cinder.attachments == {}


def test_uploads_and_downloads_count_as_this_process_s_activity(
        store, cinder, context, monkeypatch):
    seen = []

    class Source(io.BytesIO):
        def read(self, *args):
            seen.append(store.attachments.activity.busy())
            return super().read(*args)
    loc = location_for(store, store.add(IMAGE_ID, Source(b'abcd'), 4,
                                        'sha512', context=context)[0])
    assert set(seen) == {True} and not store.attachments.activity.busy()
    body, _ = store.get(loc, context=context)
    assert store.attachments.activity.busy()
    assert b''.join(body) == b'abcd'
    assert not store.attachments.activity.busy()
    cinder.fail['attachment_create'] = exceptions.BackendException('x')
    with pytest.raises(exceptions.BackendException):
        store.get(loc, context=context)
    assert not store.attachments.activity.busy()


def test_the_warm_up_waits_until_this_process_transfers_nothing(
        make_store, cinder, context, monkeypatch):
    store = make_store(cinder_plus_attach_grace_period=60)
    cinder.multiattach = True
    monkeypatch.setattr(store.attachments.keepers, 'fill',
                        lambda *a, **k: None)
    monkeypatch.setattr(store_mod, 'WARM_UP_QUIET', 0.1)
    with store.attachments.activity.running():    # another download
        loc = _stored(store, context, b'abcd')
        time.sleep(0.3)
        assert [a[1] for a in cinder.attachments.values()] == []
    assert store._warm_ups.wait_done(5)
    assert [a[1] for a in cinder.attachments.values()] == ['ro']
    store.delete(loc, context=context)
    no_leaks(cinder)


def test_a_warm_up_losing_to_a_delete_leaves_nothing(
        make_store, cinder, context, monkeypatch):
    store = make_store(cinder_plus_attach_grace_period=60)
    cinder.multiattach = True
    cinder.fail['attachment_create'] = exceptions.NotFound('deleted')
    real_create = cinder.attachment_create
    creates = []

    def create_once(*args, **kwargs):       # the upload's own attach works
        creates.append(args)
        if len(creates) == 1:
            del cinder.fail['attachment_create']
            result = real_create(*args, **kwargs)
            cinder.fail['attachment_create'] = exceptions.NotFound('gone')
            return result
        return real_create(*args, **kwargs)
    monkeypatch.setattr(cinder, 'attachment_create', create_once)
    loc, fills = _warmed_up(store, cinder, context, monkeypatch)
    assert len(creates) == 2 and fills == []
    assert cinder.attachments == {}
    assert store.attachments.records.load(
        loc.store_location.volume_id) is None


def test_delete_waits_again_for_a_reader_that_attached_just_before_it(
        store, cinder, context, monkeypatch):
    """Between the delete's look and its Cinder call, a warm-up attached."""
    loc = _stored(store, context, b'abcd')
    (vol,) = cinder.volumes.values()
    racing = {'attachment_id': 'warm-up', 'host_name': 'this-host'}
    real_delete = cinder.delete
    raced = []

    def delete(volume_id):
        if not raced:
            raced.append(volume_id)
            vol.attachments.append(racing)
            raise exceptions.BackendException('Invalid volume: attached')
        return real_delete(volume_id)
    monkeypatch.setattr(cinder, 'delete', delete)
    monkeypatch.setattr(store_mod.time, 'sleep',
                        lambda s: vol.attachments.remove(racing))
    store.delete(loc, context=context)
    assert raced and cinder.volumes == {}


def test_delete_refused_for_another_reason_is_reported_at_once(
        store, cinder, context):
    loc = _stored(store, context, b'abcd')
    cinder.fail['delete'] = exceptions.BackendException('has snapshots')
    with pytest.raises(exceptions.InUseByStore, match='has snapshots'):
        store.delete(loc, context=context)
    assert [c[0] for c in cinder.calls].count('delete') == 1


def test_grace_period_reuses_attachment(make_store, cinder, context):
    store = make_store(cinder_plus_attach_grace_period=60)
    loc = _stored(store, context, b'abcd')
    for _ in range(3):
        assert b''.join(store.get(loc, context=context)[0]) == b'abcd'
    creates = [c for c in cinder.calls if c[0] == 'attachment_create']
    assert [c[2] for c in creates] == ['rw', 'ro']


def test_is_image_associated_with_store(store, cinder, context):
    loc = _stored(store, context, b'abcd')
    vid = loc.store_location.volume_id
    assert store.is_image_associated_with_store(context, vid)
    cinder.volumes[vid].volume_type = 'silver-type'
    assert not store.is_image_associated_with_store(context, vid)
    assert not store.is_image_associated_with_store(
        context, '00000000-0000-0000-0000-000000000000')


def test_untyped_store_owns_volumes_of_cinders_default_type(
        make_store, cinder, context):
    store = make_store(cinder_volume_type=None)
    vid = _stored(store, context, b'abcd').store_location.volume_id
    assert store.is_image_associated_with_store(context, vid)
    cinder.default_type = 'another-default'
    assert not store.is_image_associated_with_store(context, vid)


def test_configure_add_warns_of_a_missing_volume_type(make_store, caplog):
    make_store(cinder_volume_type='no-such-type')
    assert "volume type 'no-such-type'" in caplog.text
    assert 'not found' in caplog.text


def test_store_exposes_what_glance_reads(store):
    assert store.url_prefix == 'cinder://gold'
    assert store.get_schemes() == ('cinder', 'cinder_plus')
    assert store.store_conf.cinder_volume_type == 'gold-type'
    assert store.store_conf.cinder_use_multipath is False
    from glance_store import capabilities as caps
    for bit in (caps.BitMasks.READ_RANDOM, caps.BitMasks.WRITE_ACCESS,
                caps.BitMasks.DRIVER_REUSABLE):
        assert store.is_capable(bit)
    assert os.path.isdir(store.store_conf.cinder_plus_state_dir)


@pytest.mark.parametrize('step', ['replace_metadata', 'set_readonly'])
def test_add_final_step_failure_deletes_volume(store, cinder, context, step):
    cinder.fail[step] = exceptions.BackendException('cinder said no')
    with pytest.raises(exceptions.BackendException, match='cinder said no'):
        store.add(IMAGE_ID, io.BytesIO(b'x' * 10), 10, 'sha512',
                  context=context)
    assert cinder.volumes == {}
    no_leaks(cinder)


@pytest.mark.parametrize('name,metadata,vtype,why', [
    ('data', {}, 'gold-type', 'no glance_image_id'),
    ('image-x', {'glance_image_id': 'x'}, 'silver-type', 'volume type'),
    ('image-x', {'image_owner': 'p'}, 'silver-type', 'volume type'),
])
def test_foreign_volumes_are_never_attached_read_or_deleted(
        store, cinder, context, name, metadata, vtype, why):
    vol = cinder.create(1, name, metadata, vtype)
    loc = location_for(store, 'cinder://gold/%s' % vol.id)
    with pytest.raises(exceptions.NotFound, match=why):
        store.get(loc, context=context)
    with pytest.raises(exceptions.NotFound, match=why):
        store.get_size(loc, context=context)
    with pytest.raises(exceptions.NotFound, match=why):
        store.delete(loc, context=context)
    assert vol.id in cinder.volumes
    assert not [c for c in cinder.calls if c[0] == 'attachment_create']


def test_image_id_is_checked_when_glance_gives_it(store, cinder, context):
    vol = cinder.create(1, 'image-a', {'glance_image_id': 'a'}, 'gold-type')
    loc = location_for(store, 'cinder://gold/%s' % vol.id)
    loc.image_id = 'b'
    with pytest.raises(exceptions.NotFound, match='belongs to image a'):
        store.get(loc, context=context)
    loc.image_id = 'a'
    assert store.get_size(loc, context=context) == units.Gi


def test_cinder_clone_before_its_location_is_added_is_readable(
        store, cinder, context):
    # upload-to-image by clone: glance_image_id comes after add_location
    vol = cinder.create(1, 'image-c', {'image_owner': 'p'}, 'gold-type')
    loc = location_for(store, 'cinder://gold/%s' % vol.id)
    assert store.get_size(loc, context=context) == units.Gi


def test_warm_get_skips_the_cinder_lookup(make_store, cinder, context):
    store = make_store(cinder_plus_attach_grace_period=60)
    loc = _stored(store, context, b'abcd')
    for _ in range(3):
        it, size = store.get(loc, context=context)
        assert size == 4 and b''.join(it) == b'abcd'
    gets = [c for c in cinder.calls if c[0] == 'get']
    cinder.calls.clear()
    it, _ = store.get(loc, context=context)
    assert b''.join(it) == b'abcd'
    assert not [c for c in cinder.calls if c[0] == 'get']
    assert len(gets) >= 1
    store.delete(loc, context=context)
    no_leaks(cinder)


def test_warm_get_with_user_tokens_asks_cinder(make_store, cinder, context):
    store = make_store(cinder_plus_attach_grace_period=60,
                       cinder_store_user_name=None,
                       cinder_store_password=None)
    loc = _stored(store, context, b'abcd')
    for _ in range(2):
        b''.join(store.get(loc, context=context)[0])
    cinder.calls.clear()
    b''.join(store.get(loc, context=context)[0])
    assert [c for c in cinder.calls if c[0] == 'get']
    store.delete(loc, context=context)


def test_warm_get_in_another_worker_skips_the_cinder_lookup(
        make_store, cinder, context):
    # two glance-api processes of one host share the attachment records;
    # the second one finds the volume in the record, not in Cinder
    first = make_store(cinder_plus_attach_grace_period=60)
    loc = _stored(first, context, b'abcd')
    assert b''.join(first.get(loc, context=context)[0]) == b'abcd'
    other = make_store(cinder_plus_attach_grace_period=60)
    cinder.calls.clear()
    it, size = other.get(loc, context=context)
    assert size == 4 and b''.join(it) == b'abcd'
    assert not [c for c in cinder.calls if c[0] in ('get',
                                                    'attachment_create')]
    # the warm attachment still yields at once to a delete
    other.delete(loc, context=context)
    assert other.attachments.warm_volume(loc.store_location.volume_id) is None
    no_leaks(cinder)


def test_warm_record_still_refuses_foreign_volumes(make_store, cinder,
                                                   context):
    store = make_store(cinder_plus_attach_grace_period=60)
    vol = cinder.create(1, 'not-an-image', {}, 'gold-type')
    cinder.get(vol.id)
    with store.attachments.attach(cinder, cinder.get(vol.id), 'ro'):
        pass        # another tool of this host read it: kept warm
    other = make_store(cinder_plus_attach_grace_period=60)
    assert other.attachments.warm_volume(vol.id) is not None
    loc = location_for(other, 'cinder://gold/%s' % vol.id)
    with pytest.raises(exceptions.NotFound):
        other.get(loc, context=context)
    store.attachments.release_idle(cinder, vol.id)
    no_leaks(cinder)


def test_warm_record_of_an_older_version_asks_cinder(make_store, cinder,
                                                     context):
    first = make_store(cinder_plus_attach_grace_period=60)
    loc = _stored(first, context, b'abcd')
    b''.join(first.get(loc, context=context)[0])
    records = first.attachments.records
    record = records.load(loc.store_location.volume_id)
    record.volume = None
    records.save(record)
    other = make_store(cinder_plus_attach_grace_period=60)
    cinder.calls.clear()
    assert b''.join(other.get(loc, context=context)[0]) == b'abcd'
    assert [c for c in cinder.calls if c[0] == 'get']
    other.delete(loc, context=context)
    no_leaks(cinder)


def test_a_writer_whose_detach_fails_fails_the_add_clearly(store, cinder):
    # the bytes are written, but a volume still attached cannot be made
    # read-only: say why, instead of Cinder's "status must be available"
    cinder.fail['attachment_delete'] = exceptions.BackendException(
        'deleting attachment x failed: HTTP 500')
    with pytest.raises(exceptions.BackendException,
                       match='attachment .* is not deleted'):
        store.add('img-1', io.BytesIO(b'x' * 1000), 1000, 'sha256')
    assert 'set_readonly' not in [c[0] for c in cinder.calls]


def _read_modes(monkeypatch):
    """The keyword arguments of every device read the store starts."""
    modes = []
    real = store_mod.transfer.read_range

    def read_range(target, offset, length, **kw):
        modes.append(kw)
        return real(target, offset, length, **kw)
    monkeypatch.setattr(store_mod.transfer, 'read_range', read_range)
    return modes


def test_a_whole_buffered_read_leaves_the_image_marked_in_memory(
        make_store, cinder, context, monkeypatch):
    """A whole buffered read is as good as a fill.

    Two downloads at once: the second reads buffered, and once it has read
    the whole image a later download alone reads memory too.
    """
    store = make_store(cinder_plus_attach_grace_period=60)
    data = data_of(1024 * 1024 + 5)
    loc = _stored(store, context, data)
    modes = _read_modes(monkeypatch)
    monkeypatch.setattr(store.attachments.keepers, 'fill',
                        lambda *a, **kw: None)     # no background fill
    volume_id = loc.store_location.volume_id
    first, _ = store.get(loc, context=context)
    head = next(first)
    partial, _ = store.get(loc, context=context, chunk_size=1000)
    assert b''.join(partial) == data[:1000]     # not the whole image
    assert not store.attachments.records.load(volume_id).in_page_cache
    second, _ = store.get(loc, context=context)
    assert b''.join(second) == data
    assert b''.join(first) == data[len(head):]
    assert store.attachments.records.load(volume_id).in_page_cache
    third, _ = store.get(loc, context=context)
    assert b''.join(third) == data
    assert [m['direct'] for m in modes] == [True, False, False, False]
    assert all(m['leave_direct'] is not None for m in modes)
    store.attachments.warm.close()
    no_leaks(cinder)


def test_second_download_of_a_warm_image_reads_the_page_cache(
        make_store, cinder, context, monkeypatch):
    """A first read is direct and fills the cache; later ones read it."""
    store = make_store(cinder_plus_attach_grace_period=60)
    data = data_of(1024 * 1024 + 5)
    loc = _stored(store, context, data)
    modes = _read_modes(monkeypatch)
    volume_id = loc.store_location.volume_id
    for _ in range(3):
        it, _ = store.get(loc, context=context)
        assert b''.join(it) == data
        for _ in range(500):    # the fill after the first read, in a thread
            if store.attachments.records.load(volume_id).in_page_cache:
                break
            time.sleep(0.01)
    assert [m['direct'] for m in modes] == [True, False, False]
    # what is in memory is handed on in pieces that stay in the CPU cache
    assert [m['cached'] for m in modes] == [False, True, True]
    store.attachments.warm.close()
    no_leaks(cinder)
