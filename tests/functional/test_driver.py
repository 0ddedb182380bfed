"""Our Store in-process against the real Cinder: the paths the API hides."""

import hashlib
import io
import uuid

from glance_store import exceptions
from glance_store import location as gs_location
from glance_store import multi_backend
from oslo_config import cfg
import pytest

from glance_cinder_store import store as store_mod
from tests.functional import conftest as fx

MiB = 1024 * 1024


class Context:
    def __init__(self, project_id):
        self.project_id = project_id
        self.user_id = 'func-test'
        self.auth_token = None
        self.service_catalog = None

    def to_dict(self):
        return {'project_id': self.project_id}


def make_store(state_dir, backend='gold', **overrides):
    """A Store configured from the cloud's own glance-api.conf."""
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.DictOpt('enabled_backends'))
    conf(['--config-file', fx.GLANCE_CONF], project='glance')
    multi_backend.register_store_opts(conf)
    overrides.setdefault('cinder_plus_state_dir', str(state_dir))
    # Short-lived test processes: detach as soon as the last reader is done
    # (the grace period is for long-lived glance-api workers).
    overrides.setdefault('cinder_plus_attach_grace_period', 0)
    # glance-api heals the host; a test process must not race its tests.
    overrides.setdefault('cinder_plus_self_heal_interval', 0)
    for key, value in overrides.items():
        conf.set_override(key, value, group=backend)
    store = store_mod.CinderStore(conf, backend=backend)
    store.configure()
    gs_location.register_scheme_backend_map({'cinder': {backend: {
        'store': store, 'location_class': store_mod.StoreLocation,
        'store_entry': 'cinder_plus'}}})
    return store


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / 'state')


@pytest.fixture
def ctx():
    return Context('func-project')


def volumes_named(cinder, name):
    return cinder.volumes.list(search_opts={'all_tenants': 1, 'name': name})


@pytest.mark.parametrize('declared,actual', [(2 * MiB, 2 * MiB - 1),
                                             (2 * MiB, 2 * MiB + 1)])
def test_size_mismatch_leaves_nothing(store, ctx, cinder, declared, actual):
    image_id = str(uuid.uuid4())
    with pytest.raises(exceptions.Invalid):
        store.add(image_id, io.BytesIO(b'z' * actual), declared, 'sha512',
                  context=ctx)
    fx.wait_for(lambda: not volumes_named(cinder, 'image-' + image_id),
                what='failed upload volume deleted')


def test_missing_volume_type_is_a_clear_error(tmp_path, ctx, cinder):
    store = make_store(tmp_path / 'state', cinder_volume_type='no-such-type')
    image_id = str(uuid.uuid4())
    with pytest.raises(exceptions.StorageWriteDenied, match='no-such-type'):
        store.add(image_id, io.BytesIO(b'z'), 1, 'sha512', context=ctx)
    assert not volumes_named(cinder, 'image-' + image_id)


def test_stream_error_midway_leaves_nothing(store, ctx, cinder):
    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() >= 3 * MiB:
                raise ConnectionResetError('client went away')
            return super().read(n)

    image_id = str(uuid.uuid4())
    with pytest.raises(ConnectionResetError):
        store.add(image_id, Broken(b'q' * 8 * MiB), 8 * MiB, 'sha512',
                  context=ctx)
    fx.wait_for(lambda: not volumes_named(cinder, 'image-' + image_id),
                what='failed upload volume deleted')


def test_reads_and_deletes_images_of_the_builtin_driver(
        tmp_path, glance, images, cinder, ctx):
    data = b''.join(hashlib.sha512(b'%d' % i).digest() for i in range(40000))
    image = images()
    glance.images.upload(image.id, io.BytesIO(data), image_size=len(data),
                         backend='builtin')
    vol = fx.image_volume(cinder, image.id)
    # The same volumes, read by our driver configured for that store.
    ours = make_store(tmp_path / 'state', backend='builtin')
    loc = gs_location.get_location_from_uri_and_backend(
        'cinder://builtin/%s' % vol.id, 'builtin', conf=ours.conf)
    assert ours.get_size(loc, context=ctx) == len(data)
    it, size = ours.get(loc, context=ctx)
    assert b''.join(it) == data
    it, _ = ours.get(loc, offset=100, chunk_size=1000, context=ctx)
    assert b''.join(it) == data[100:1100]
    ours.delete(loc, context=ctx)
    fx.wait_gone(cinder, vol.id)


def test_driver_round_trip_with_unknown_size(store, ctx, cinder):
    data = (b'\x01' * MiB + bytes(3 * MiB)) * 300 + b'tail'  # 1.2 GiB
    image_id = str(uuid.uuid4())
    url, size, md5, sha, meta = store.add(image_id, io.BytesIO(data), 0,
                                          'sha256', context=ctx)
    try:
        assert size == len(data) and meta == {'store': 'gold'}
        assert md5 == hashlib.md5(data).hexdigest()
        assert sha == hashlib.sha256(data).hexdigest()
        loc = gs_location.get_location_from_uri_and_backend(
            url, 'gold', conf=store.conf)
        vol = cinder.volumes.get(loc.store_location.volume_id)
        assert vol.size == 2 and vol.metadata['image_size'] == str(size)
        got = hashlib.sha256()
        for piece in store.get(loc, context=ctx)[0]:
            got.update(piece)
        assert got.hexdigest() == sha
    finally:
        store.delete(loc, context=ctx)


def test_direct_reads_of_a_real_volume(tmp_path, ctx, cinder):
    """cinder_plus_direct_reads: whole and ranged reads of a fresh device."""
    store = make_store(tmp_path / 'state', cinder_plus_direct_reads=True)
    data = bytes(range(256)) * (12 * MiB // 256) + b'tail'
    image_id = str(uuid.uuid4())
    url, size, _, _, _ = store.add(image_id, io.BytesIO(data), len(data),
                                   'sha512', context=ctx)
    loc = gs_location.get_location_from_uri_and_backend(url, 'gold',
                                                        conf=store.conf)
    try:
        chunks, _ = store.get(loc, context=ctx)
        assert hashlib.sha256(b''.join(chunks)).digest() == \
            hashlib.sha256(data).digest()
        for offset, length in ((1, 5 * MiB), (4096, 4096),
                               (len(data) - 3, 3)):
            chunks, _ = store.get(loc, offset=offset, chunk_size=length,
                                  context=ctx)
            assert b''.join(chunks) == data[offset:offset + length]
    finally:
        store.delete(loc, context=ctx)
