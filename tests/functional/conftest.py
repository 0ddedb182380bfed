"""Fixtures for tests against a running cloud (by default tools/aio's).

The cloud is found through ``tools/aio env <user>``; to use another cloud,
set GCS_CLOUD=external and the usual OS_* variables for an admin, plus
GCS_PASSWORD for the users glance, demo and other, and GCS_CINDER_LOG for
the cinder-volume log the clone checks read.
"""

import glob
import os
import sys
import uuid

from cinderclient import client as cinder_client
from glanceclient import client as glance_client
import pytest

from glance_cinder_store.cinder import RELEASE_MARK

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'tools'))
from aio_lib import common  # noqa: E402  (tools/ is not installed)
from aio_lib import names  # noqa: E402

AIO_ROOT = common.AIO_ROOT
AIO = os.path.join(REPO, 'tools', 'aio')
CINDER_LOG = os.environ.get(
    'GCS_CINDER_LOG', os.path.join(AIO_ROOT, 'logs', 'cinder-volume.log'))
GLANCE_CONF = os.environ.get('GCS_GLANCE_CONF', '/etc/glance/glance-api.conf')
TYPES = names.TYPES
ENV = common.aio_env()
wait_for = common.wait_for


def session_for(user):
    return common.session(user, env=ENV)


@pytest.fixture(scope='session')
def admin():
    return session_for('admin')


@pytest.fixture(scope='session')
def glance(admin):
    return glance_client.Client('2', session=admin)


@pytest.fixture(scope='session')
def cinder(admin):
    return cinder_client.Client('3.70', session=admin)


@pytest.fixture(scope='session')
def service():
    """The glance service user (service role: may read image locations)."""
    return glance_client.Client('2', session=session_for('glance'))


@pytest.fixture(scope='session')
def glance_url(admin):
    return admin.get_endpoint(service_type='image', interface='public')


def loop_devices():
    """The loop devices bound to files of the cloud."""
    return set(common.loop_devices(under=AIO_ROOT))


def loops_of(volume_id):
    """The loop devices bound to ``volume_id``'s file."""
    return [device for device, backing in
            common.loop_devices(under=AIO_ROOT).items()
            if volume_id in backing]


def read_volume(volume_id, length):
    """A volume's first bytes, read from the loop backend's file."""
    (path,) = glob.glob(os.path.join(common.LOOP_DIR, '*%s*' % volume_id))
    with open(path, 'rb') as f:
        return f.read(length)


def all_volumes(cinder):
    return {v.id: v for v in cinder.volumes.list(
        search_opts={'all_tenants': 1})}


@pytest.fixture(scope='session', autouse=True)
def nothing_leaks(cinder):
    """After all tests: no new volume, attachment or loop device."""
    volumes_before = set(all_volumes(cinder))
    loops_before = loop_devices()
    yield

    def leftovers():
        vols = all_volumes(cinder)
        return ({vid: (v.name, v.status) for vid, v in vols.items()
                 if vid not in volumes_before},
                {vid: v.attachments for vid, v in vols.items()
                 if v.attachments},
                loop_devices() - loops_before)
    try:
        wait_for(lambda: not any(leftovers()), timeout=60, interval=1)
    except common.TimedOut:
        pass
    leaked, attached, loops = leftovers()
    assert not leaked, 'volumes left behind: %s' % leaked
    assert not attached, 'attachments left behind: %s' % attached
    assert not loops, 'loop devices left behind: %s' % loops


def cinder_attachments(cinder, volume_id):
    """Every attachment of the volume, also one not completed yet.

    A reader is attached once it has its device; Cinder's "complete" may
    still be on its way then, and the volume's own view lists an
    attachment only after it.
    """
    return cinder.attachments.list(search_opts={'volume_id': volume_id,
                                                'all_tenants': 1})


def image_volume(cinder, image_id):
    """The volume that holds an image written by a store driver."""
    vols = cinder.volumes.list(search_opts={'all_tenants': 1,
                                            'name': 'image-%s' % image_id})
    assert len(vols) == 1, vols
    return cinder.volumes.get(vols[0].id)


def image_volumes(cinder, image_id):
    """An image's volumes (one per Cinder store it is in) by volume type.

    Names are compared here, not by Cinder: listings may ignore ``name=``.
    """
    name = 'image-%s' % image_id
    vols = [v for v in cinder.volumes.list(search_opts={'all_tenants': 1})
            if v.name == name and v.status != 'deleting']
    by_type = {}
    for v in vols:
        assert v.volume_type not in by_type, 'two volumes of one type: %s' % (
            vols,)
        by_type[v.volume_type] = v
    return by_type


def wait_volume(cinder, volume_id, status='available', timeout=120):
    def check():
        vol = cinder.volumes.get(volume_id)
        assert not vol.status.startswith('error'), vol.status
        return vol if vol.status == status else None
    return wait_for(check, timeout, what='volume %s %s' % (volume_id, status))


def wait_gone(cinder, volume_id, timeout=120):
    common.wait_volume_gone(cinder, volume_id, timeout)


def without_warm_up(cinder, volume_id, timeout=30):
    """Make glance-api let go of the new image it warmed up.

    glance-api attaches a new image of a multiattach type after its upload
    (``cinder_plus_warm_after_upload``); tests that count the volume's
    attachments wait for that one and ask for it, as another host would.
    """
    wait_for(lambda: cinder.volumes.get(volume_id).attachments, timeout,
             what='glance-api warmed up volume %s' % volume_id)
    cinder.volumes.set_metadata(volume_id, {RELEASE_MARK: 'wanted'})
    wait_for(lambda: not cinder.volumes.get(volume_id).attachments, 60,
             what='glance-api let go of volume %s' % volume_id)
    cinder.volumes.delete_metadata(volume_id, [RELEASE_MARK])
    return cinder.volumes.get(volume_id)


@pytest.fixture
def images(glance):
    """Create images; every one is deleted after the test."""
    made = []

    def create(**kwargs):
        kwargs.setdefault('name', 'gcs-func-%s' % uuid.uuid4().hex[:8])
        kwargs.setdefault('disk_format', 'raw')
        kwargs.setdefault('container_format', 'bare')
        image = glance.images.create(**kwargs)
        made.append(image.id)
        return image
    yield create
    for image_id in made:
        try:
            glance.images.delete(image_id)
        except Exception:
            pass


@pytest.fixture
def volumes(cinder):
    """Create volumes (as any user's client); deleted after the test."""
    made = []

    def create(client=None, **kwargs):
        vol = (client or cinder).volumes.create(**kwargs)
        made.append(vol.id)
        return vol
    yield create
    for vid in made:
        try:
            vol = cinder.volumes.get(vid)
            for att in vol.attachments:
                cinder.attachments.delete(att['attachment_id'])
            cinder.volumes.delete(vid)
            wait_gone(cinder, vid)
        except Exception:
            pass


def log_mark(path=CINDER_LOG):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def log_since(mark, path=CINDER_LOG):
    with open(path, 'rb') as f:
        f.seek(mark)
        return f.read().decode('utf-8', 'replace')
