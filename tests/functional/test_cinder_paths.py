"""Cinder's fast paths with our store: clone from image, upload to image."""

import hashlib
import io
import uuid

from cinderclient import client as cinder_client
import pytest

from tests.functional import conftest as fx
from tests.functional.test_images import pattern

MiB = 1024 * 1024


@pytest.fixture(scope='module')
def gold_image(glance, cinder):
    data = pattern(3 * MiB + 5, 11)
    image = glance.images.create(name='gcs-func-clone-src',
                                 disk_format='raw', container_format='bare',
                                 visibility='public')
    glance.images.upload(image.id, io.BytesIO(data), image_size=len(data),
                         backend='gold')
    yield glance.images.get(image.id), data
    glance.images.delete(image.id)
    fx.wait_for(lambda: not cinder.volumes.list(search_opts={
        'all_tenants': 1, 'name': 'image-%s' % image.id}),
        what='source image volume deleted')


def upload_volume(cinder, glance, vol, timeout=300):
    """Cinder's upload-to-image; returns the new image once active."""
    name = 'gcs-func-%s' % uuid.uuid4().hex[:8]
    resp = cinder.volumes.upload_to_image(
        vol, False, name, 'bare', 'raw', visibility='private',
        protected=False)
    new_id = resp[1]['os-volume_upload_image']['image_id']

    def active():
        image = glance.images.get(new_id)
        return image if image.status == 'active' else None
    try:
        image = fx.wait_for(active, timeout, what='image %s active' % new_id)
    except BaseException:
        glance.images.delete(new_id)
        raise
    fx.wait_volume(cinder, vol.id)
    return image


@pytest.mark.parametrize('user', ['admin', 'demo'])
def test_volume_from_image_is_a_clone(gold_image, cinder, volumes, user):
    image, data = gold_image
    client = (cinder if user == 'admin' else
              cinder_client.Client('3.70', session=fx.session_for(user)))
    src = fx.image_volume(cinder, image.id)
    mark = fx.log_mark()
    vol = volumes(client, size=1, imageRef=image.id,
                  name='gcs-func-boot-%s' % user)
    vol = fx.wait_volume(cinder, vol.id)
    log = fx.log_since(mark)
    assert 'Will clone a volume from the image volume %s' % src.id in log
    assert vol.bootable == 'true'
    assert fx.read_volume(vol.id, len(data)) == data


def test_upload_to_image_by_clone_lands_in_store_of_volume_type(
        gold_image, glance, cinder, volumes, service):
    image, data = gold_image
    vol = volumes(size=1, imageRef=image.id,
                  volume_type=fx.TYPES[fx.names.SILVER],
                  name='gcs-func-up-clone')
    vol = fx.wait_volume(cinder, vol.id)
    mark = fx.log_mark()
    new = upload_volume(cinder, glance, vol)
    new_id = new.id
    try:
        assert new.stores == 'silver'
        (url,) = [loc['url'] for loc in
                  service.images.get_image_locations(new_id)]
        assert url.startswith('cinder://silver/')
        clone_id = url.rsplit('/', 1)[1]
        assert clone_id != vol.id
        clone = cinder.volumes.get(clone_id)
        assert clone.volume_type == fx.TYPES[fx.names.SILVER]
        assert clone.metadata.get('image_owner')
        assert 'Failed to clone' not in fx.log_since(mark)
        # the image reads back through our store (Glance hashed it so)
        whole = cinder.volumes.get(clone_id).size * 1024 ** 3
        assert new.size == whole
    finally:
        glance.images.delete(new_id)


def test_data_upload_lands_in_store_named_by_volume_type(
        gold_image, glance, cinder, volumes, service):
    image, data = gold_image
    vol = volumes(size=1, imageRef=image.id,
                  volume_type=fx.names.TO_SILVER_TYPE, name='gcs-func-up-data')
    vol = fx.wait_volume(cinder, vol.id)
    new = upload_volume(cinder, glance, vol)
    new_id = new.id
    try:
        assert new.stores == 'silver'
        written = fx.image_volume(cinder, new_id)   # made by our add()
        assert written.volume_type == fx.TYPES[fx.names.SILVER]
        assert written.metadata['image_size'] == str(1024 ** 3)
        first = pattern(3 * MiB + 5, 11)
        body = b''.join(glance.images.data(new_id))
        assert body[:len(first)] == first
        assert hashlib.sha512(body).hexdigest() == new.os_hash_value
    finally:
        glance.images.delete(new_id)
