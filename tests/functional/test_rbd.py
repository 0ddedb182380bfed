"""Ceph RBD: the store ``ceph`` (Cinder's RBDDriver, librbd handles).

os-brick hands a glance host a librbd handle, not a device: these tests
run every path of the driver on it (sizes, ranges, checksums, concurrent
and killed readers, a failed upload, the built-in driver's images both
ways) and Cinder's clone fast paths, and check that no RBD image,
attachment or temporary file holding the key is left behind.
"""

import glob
import hashlib
import io
import os
import signal
import subprocess
import sys
import uuid

from glance_store._drivers.cinder import store as builtin_store
from glance_store import location as gs_location
import pytest

from glance_cinder_store.cinder import RELEASE_MARK

from tests.functional import conftest as fx
from tests.functional import test_attach_concurrency as conc
from tests.functional import test_cinder_paths as paths
from tests.functional import test_driver
from tests.functional.test_images import pattern
from tests.functional.test_images import Stream

MiB = 1024 * 1024
GiB = 1024 * MiB
SIZE = 24 * MiB + 4097
#: what an operator's glance host has: /etc/ceph and the client.cinder key
RBD = ['rbd', '--id', 'cinder', '--pool', 'volumes']
CEPH_TYPE = fx.names.CEPH_TYPES[fx.names.CEPH]

pytestmark = pytest.mark.skipif(
    not os.path.exists('/etc/ceph/ceph.client.cinder.keyring'),
    reason='no Ceph in this cloud (AIO_CEPH=0)')


def rbd_images():
    """RBD images of live volumes.

    Not Cinder's silent references: its RBD driver (29.0) renames a
    deleted volume that ever had a copy-on-write clone to
    ``volume-<id>.deleted`` and keeps it with the clone's snapshot, also
    after the clone is gone (deleting a clone does not clean up its
    parent's snapshot).  That is Cinder's to clean, not ours.
    """
    out = subprocess.run(RBD + ['ls'], capture_output=True, text=True,
                         check=True).stdout
    return {name for name in out.split() if not name.endswith('.deleted')}


def rbd_info(volume_id):
    return subprocess.run(RBD + ['info', 'volume-%s' % volume_id],
                          capture_output=True, text=True, check=True).stdout


def key_files():
    """os-brick's temporary ceph.conf files (they hold the key)."""
    return set(glob.glob('/tmp/brickrbd_*'))


@pytest.fixture(scope='module', autouse=True)
def lock_path(tmp_path_factory):
    """What glance-api.conf gives glance-api: [oslo_concurrency] lock_path.

    In-process stores need it here: os-brick guards connections to
    volumes with shared targets (Cinder's RBD volumes have them) with an
    external lock, and the built-in driver locks detaches.
    """
    from oslo_concurrency import lockutils  # noqa: F401 (registers it)
    from oslo_config import cfg
    # an override, not lockutils.set_defaults: oslo.config caches a value
    # read earlier in the session, and set_defaults does not clear it
    cfg.CONF.set_override('lock_path', str(tmp_path_factory.mktemp('locks')),
                          group='oslo_concurrency')
    yield
    cfg.CONF.clear_override('lock_path', group='oslo_concurrency')


@pytest.fixture(scope='module', autouse=True)
def nothing_left_in_ceph():
    """After the module: no new RBD image and no key file in /tmp."""
    before, keys = rbd_images(), key_files()
    yield
    fx.wait_for(lambda: rbd_images() <= before, timeout=60,
                what='RBD images of the tests removed: %s'
                % (rbd_images() - before))
    assert key_files() <= keys


@pytest.fixture(scope='module')
def ceph_image(glance, cinder):
    data = pattern(SIZE, 21)
    img = glance.images.create(name='gcs-func-rbd', disk_format='raw',
                               container_format='bare', visibility='public')
    glance.images.upload(img.id, io.BytesIO(data), image_size=len(data),
                         backend='ceph')
    vol = fx.image_volume(cinder, img.id)
    yield glance.images.get(img.id), vol, data
    glance.images.delete(img.id)
    fx.wait_gone(cinder, vol.id)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / 'state'
    path.mkdir()
    return str(path)


def test_rbd_upload_download_ranges_checksums(ceph_image, admin, glance_url,
                                              service):
    image, vol, data = ceph_image
    assert image.status == 'active' and image.stores == 'ceph'
    assert image.size == len(data)
    assert image.checksum == hashlib.md5(data).hexdigest()
    assert image.os_hash_value == hashlib.sha512(data).hexdigest()
    assert vol.volume_type == CEPH_TYPE
    assert vol.metadata['image_size'] == str(len(data))
    assert 'volume-%s' % vol.id in rbd_images()
    assert not vol.attachments
    assert paths_of(service, image.id) == ['cinder://ceph/%s' % vol.id]
    whole = admin.get('%s/v2/images/%s/file' % (glance_url, image.id))
    assert whole.status_code == 200 and whole.content == data
    end = len(data) - 1
    for first, last in [(0, 0), (10, 99), (4 * MiB - 1, 4 * MiB),
                        (end - 4, end)]:
        part = admin.get('%s/v2/images/%s/file' % (glance_url, image.id),
                         headers={'Range': 'bytes=%d-%d' % (first, last)})
        assert part.status_code == 206
        assert part.content == data[first:last + 1]


def paths_of(service, image_id):
    return [loc['url'] for loc in
            service.images.get_image_locations(image_id)]


def test_rbd_unknown_size_grows_the_image_online(glance, cinder, images,
                                                 admin, glance_url):
    size = GiB + 5 * MiB + 3
    sha = hashlib.sha512()

    def chunks():
        sent = 0
        while sent < size:
            n = min(8 * MiB, size - sent)
            piece = pattern(n, sent) if sent % (256 * MiB) == 0 else bytes(n)
            sha.update(piece)
            sent += n
            yield piece

    image = images()
    glance.images.upload(image.id, Stream(chunks()), backend='ceph')
    image = glance.images.get(image.id)
    assert image.size == size and image.os_hash_value == sha.hexdigest()
    vol = fx.image_volume(cinder, image.id)
    assert vol.size == 2 and vol.volume_type == CEPH_TYPE
    resp = admin.get('%s/v2/images/%s/file' % (glance_url, image.id),
                     stream=True)
    got = hashlib.sha512()
    for piece in resp.iter_content(4 * MiB):
        got.update(piece)
    assert got.hexdigest() == sha.hexdigest()


def test_rbd_16_concurrent_readers_share_one_attachment(
        ceph_image, admin, glance_url, cinder):
    image, vol, data = ceph_image
    results, wall, peak = conc.concurrent_downloads(
        admin, glance_url, image.id, vol.id, cinder)
    print('\nceph: 16 downloads, wall %.1fs, peak attachments %d'
          % (wall, peak))
    assert all(ok for ok, _, _ in results), results
    assert {digest for _, digest, _ in results} == {
        hashlib.sha256(data).hexdigest()}
    assert peak == 1
    # kept warm for the next download; let go when another host asks
    cinder.volumes.set_metadata(vol.id, {RELEASE_MARK: 'wanted'})
    try:
        fx.wait_for(lambda: not cinder.volumes.get(vol.id).attachments,
                    timeout=60, what='warm attachment released on request')
    finally:
        cinder.volumes.delete_metadata(vol.id, [RELEASE_MARK])


def start_reader(state_dir, volume_id, delay=0.05):
    return subprocess.Popen(
        [sys.executable, '-m', 'tests.functional.reader', state_dir,
         volume_id, str(delay), 'ceph'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=fx.REPO)


def test_rbd_reader_killed_mid_read(ceph_image, cinder, state_dir):
    image, vol, data = ceph_image
    keys = key_files()
    readers = [start_reader(state_dir, vol.id) for _ in range(3)]
    for r in readers:
        conc.wait_line(r, 'attached')
    assert len(fx.cinder_attachments(cinder, vol.id)) == 1
    readers[0].send_signal(signal.SIGKILL)
    readers[0].wait()
    for r in readers[1:]:
        assert conc.wait_line(r, 'done')[1] == hashlib.sha256(
            data).hexdigest()
        r.wait()
    conc.assert_clean(cinder, vol.id, state_dir)
    assert key_files() <= keys      # not even the killed reader's


def test_rbd_failed_upload_leaves_nothing(tmp_path, cinder):
    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() >= 6 * MiB:
                raise ConnectionResetError('client went away')
            return super().read(n)

    store = test_driver.make_store(tmp_path / 'state', backend='ceph')
    images_before = rbd_images()
    image_id = str(uuid.uuid4())
    with pytest.raises(ConnectionResetError):
        store.add(image_id, Broken(pattern(16 * MiB, 3)), 16 * MiB,
                  'sha512', context=test_driver.Context('rbd'))
    fx.wait_for(lambda: not test_driver.volumes_named(
        cinder, 'image-' + image_id), what='failed upload volume deleted')
    fx.wait_for(lambda: rbd_images() <= images_before,
                what='its RBD image removed')
    assert not os.listdir(tmp_path / 'state' / 'attachments')


def builtin_ceph_store():
    """The built-in glance_store cinder driver, configured as glance's."""
    from glance_store import multi_backend
    from oslo_config import cfg
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.DictOpt('enabled_backends'))
    conf(['--config-file', fx.GLANCE_CONF], project='glance')
    multi_backend.register_store_opts(conf)
    store = builtin_store.Store(conf, backend='builtin-ceph')
    store.configure()
    gs_location.register_scheme_backend_map({'cinder': {
        'builtin-ceph': {'store': store,
                         'location_class': builtin_store.StoreLocation,
                         'store_entry': 'cinder'}}})
    return store


def test_rbd_builtin_driver_images_read_by_ours(glance, cinder, images,
                                                tmp_path):
    data = pattern(6 * MiB + 7, 5)
    image = images()
    glance.images.upload(image.id, io.BytesIO(data), image_size=len(data),
                         backend='builtin-ceph')
    vol = fx.image_volume(cinder, image.id)
    assert vol.volume_type == fx.names.CEPH_TYPES[fx.names.BUILTIN_CEPH]
    ours = test_driver.make_store(tmp_path / 'state', backend='builtin-ceph')
    loc = gs_location.get_location_from_uri_and_backend(
        'cinder://builtin-ceph/%s' % vol.id, 'builtin-ceph', conf=ours.conf)
    ctx = test_driver.Context('rbd')
    assert b''.join(ours.get(loc, context=ctx)[0]) == data
    it, _ = ours.get(loc, offset=MiB - 3, chunk_size=10, context=ctx)
    assert b''.join(it) == data[MiB - 3:MiB + 7]


def test_rbd_our_images_read_by_the_builtin_driver(ceph_image, cinder):
    image, vol, data = ceph_image
    theirs = builtin_ceph_store()
    ctx = test_driver.Context('rbd')
    loc = gs_location.get_location_from_uri_and_backend(
        'cinder://builtin-ceph/%s' % vol.id, 'builtin-ceph',
        conf=theirs.conf)
    assert theirs.get_size(loc, context=ctx) == len(data)
    # Its own generator, not get()'s wrapper: that one swallows an error
    # of the detach that runs when the data ends.
    client = theirs.get_cinderclient(ctx, version='3.54')
    volume = theirs.volume_api.get(client, vol.id)
    assert b''.join(theirs._cinder_volume_data_iterator(
        client, volume, len(data))) == data
    fx.wait_for(lambda: not cinder.volumes.get(vol.id).attachments,
                timeout=30, what='the built-in driver detached')


def test_rbd_volume_from_image_is_a_copy_on_write_clone(ceph_image, cinder,
                                                        volumes):
    image, src, data = ceph_image
    mark = fx.log_mark()
    vol = volumes(size=1, imageRef=image.id, volume_type=CEPH_TYPE,
                  name='gcs-func-rbd-clone')
    vol = fx.wait_volume(cinder, vol.id)
    assert ('Will clone a volume from the image volume %s' % src.id
            in fx.log_since(mark))
    info = rbd_info(vol.id)
    assert 'parent: volumes/volume-%s@' % src.id in info, info
    out = subprocess.run(RBD + ['export', 'volume-%s' % vol.id, '-'],
                         capture_output=True, check=True).stdout
    assert out[:len(data)] == data


def test_rbd_upload_to_image_by_clone_lands_in_the_ceph_store(
        ceph_image, glance, cinder, volumes, service, admin, glance_url):
    image, src, data = ceph_image
    vol = volumes(size=1, imageRef=image.id, volume_type=CEPH_TYPE,
                  name='gcs-func-rbd-up')
    vol = fx.wait_volume(cinder, vol.id)
    mark = fx.log_mark()
    new = paths.upload_volume(cinder, glance, vol)
    try:
        assert new.stores == 'ceph'
        (url,) = paths_of(service, new.id)
        assert url.startswith('cinder://ceph/')
        clone_id = url.rsplit('/', 1)[1]
        assert clone_id != vol.id
        assert cinder.volumes.get(clone_id).volume_type == CEPH_TYPE
        assert 'parent: volumes/volume-%s@' % vol.id in rbd_info(clone_id)
        assert 'Failed to clone' not in fx.log_since(mark)
        head = admin.get('%s/v2/images/%s/file' % (glance_url, new.id),
                         headers={'Range': 'bytes=0-%d' % (len(data) - 1)})
        assert head.content == data
    finally:
        glance.images.delete(new.id)
