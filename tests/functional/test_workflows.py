"""Glance's multi-store workflows through the API, checked in Cinder.

Import (glance-direct) into the default store, named stores and all stores;
copy-image between our stores, the built-in driver's and the file store;
deleting an image from one store; downloads from each location; failures in
one store (a Cinder quota) and the retry; bad requests that leave nothing.
"""

import contextlib
import hashlib
import io
import os

from glanceclient import exc as glance_exc
from keystoneclient.v3 import client as keystone_client
import pytest

from tests.functional import conftest as fx
from tests.functional.test_images import pattern

MiB = 1024 * 1024
names = fx.names
#: store id -> volume type, for every Cinder store the cloud may have
VOLUME_TYPES = dict(fx.TYPES, **names.CEPH_TYPES)
VOLUME_TYPES[names.SINGLE] = names.SINGLE_TYPE
OURS = {names.GOLD, names.SILVER, names.CEPH, names.SINGLE}
GLANCE_LOG = os.path.join(fx.AIO_ROOT, 'logs', 'glance-api.log')


def volume_types(stores):
    return {VOLUME_TYPES[s] for s in stores if s in VOLUME_TYPES}


@pytest.fixture(scope='module')
def all_stores(glance):
    """Every store the cloud's glance-api serves."""
    return sorted(s['id'] for s in glance.images.get_stores_info()['stores'])


def stores_of(image):
    return set(filter(None, image.get('stores', '').split(',')))


def wait_import(glance, image_id, tasks_before=0, timeout=120):
    """The image once its latest import task has ended (either way)."""
    def ended():
        tasks = glance.images.get_associated_image_tasks(image_id)['tasks']
        return (len(tasks) > tasks_before and
                all(t['status'] in ('success', 'failure') for t in tasks))
    fx.wait_for(ended, timeout, what='import of %s' % image_id)
    return glance.images.get(image_id)


def staged(glance, images, data, **kwargs):
    image = images(**kwargs)
    glance.images.stage(image.id, io.BytesIO(data), image_size=len(data))
    return image


def uploaded(glance, images, data, store):
    image = images()
    glance.images.upload(image.id, io.BytesIO(data), image_size=len(data),
                         backend=store)
    return glance.images.get(image.id)


def log_mark():
    return fx.log_mark(GLANCE_LOG)


def download_from(admin, glance_url, image, store, data):
    """Read the image preferring ``store``'s location; check the hashes."""
    mark = log_mark()
    resp = admin.get('%s/v2/images/%s/file?prefer=%s'
                     % (glance_url, image.id, store), raise_exc=False)
    assert resp.status_code == 200, resp.text
    assert resp.content == data
    assert hashlib.md5(resp.content).hexdigest() == image.checksum
    assert image.os_hash_algo == 'sha512'
    assert hashlib.sha512(resp.content).hexdigest() == image.os_hash_value
    if os.path.exists(GLANCE_LOG):
        # Glance falls back to another location without saying so in the
        # answer: make sure the preferred one served.
        assert 'Get image %s data failed' % image.id not in fx.log_since(
            mark, GLANCE_LOG)


def check_in(cinder, image, stores, data):
    assert stores_of(image) == set(stores)
    vols = fx.image_volumes(cinder, image.id)
    assert set(vols) == volume_types(stores)
    for vol in vols.values():
        assert vol.metadata['glance_image_id'] == image.id
        # (in-use: a download may keep a warm read-only attachment)
        assert vol.status in ('available', 'in-use')
    for store in stores:
        if store in OURS:
            vol = vols[VOLUME_TYPES[store]]
            assert vol.metadata['image_size'] == str(len(data))
            assert 'glance_cinder_store_upload' not in vol.metadata


def delete_and_check(glance, cinder, image_id):
    vols = fx.image_volumes(cinder, image_id)
    glance.images.delete(image_id)
    for vol in vols.values():
        fx.wait_gone(cinder, vol.id)


# -- import ----------------------------------------------------------------

def test_import_into_the_default_store(glance, cinder, images, admin,
                                       glance_url):
    data = pattern(MiB + 11, 21)
    image = staged(glance, images, data)
    glance.images.image_import(image.id, method='glance-direct')
    image = wait_import(glance, image.id)
    assert image.status == 'active'
    check_in(cinder, image, ['gold'], data)
    download_from(admin, glance_url, image, 'gold', data)
    delete_and_check(glance, cinder, image.id)


def test_import_into_named_stores(glance, cinder, images, admin, glance_url):
    data = pattern(MiB + 12, 22)
    image = staged(glance, images, data)
    glance.images.image_import(image.id, method='glance-direct',
                               stores=['silver', 'files'])
    image = wait_import(glance, image.id)
    assert image.status == 'active'
    check_in(cinder, image, ['silver', 'files'], data)
    for store in ('silver', 'files'):
        download_from(admin, glance_url, image, store, data)
    delete_and_check(glance, cinder, image.id)


def test_import_into_all_stores_then_delete_from_one(glance, cinder, images,
                                                     admin, glance_url,
                                                     all_stores):
    """all_stores; each location read back; one store's copy deleted."""
    data = pattern(2 * MiB + 13, 23)
    image = staged(glance, images, data)
    glance.images.image_import(image.id, method='glance-direct',
                               all_stores=True, allow_failure=False)
    image = wait_import(glance, image.id)
    assert image.status == 'active'
    assert not image.get('os_glance_failed_import')
    # Glance lists the stores in the order it imported them, i.e. the
    # order of enabled_backends; tempest's import waiter waits for exactly
    # the ids sorted by name (and times out on any other order)
    assert image.stores == ','.join(all_stores)
    check_in(cinder, image, all_stores, data)
    for store in all_stores:
        download_from(admin, glance_url, image, store, data)
    others = [s for s in all_stores if s != 'silver']

    silver = fx.image_volumes(cinder, image.id)['glance-silver']
    glance.images.delete_from_store('silver', image.id)
    fx.wait_gone(cinder, silver.id)
    image = glance.images.get(image.id)
    assert image.status == 'active'
    check_in(cinder, image, others, data)
    for store in others:
        download_from(admin, glance_url, image, store, data)

    # bad input: a store the image is not (any more) in
    with pytest.raises(glance_exc.HTTPNotFound):
        glance.images.delete_from_store('silver', image.id)
    check_in(cinder, glance.images.get(image.id), others, data)
    delete_and_check(glance, cinder, image.id)


# -- copy-image ------------------------------------------------------------

@pytest.mark.parametrize('source,target', [
    ('gold', 'silver'), ('silver', 'gold'),
    ('gold', 'builtin'), ('builtin', 'gold'),
    ('gold', 'files'), ('files', 'gold'),
])
def test_copy_image(glance, cinder, images, admin, glance_url, source,
                    target):
    data = pattern(MiB + 7, 24)
    image = uploaded(glance, images, data, source)
    glance.images.image_import(image.id, method='copy-image',
                               stores=[target])
    image = wait_import(glance, image.id)
    assert image.status == 'active'
    assert not image.get('os_glance_failed_import')
    check_in(cinder, image, [source, target], data)
    download_from(admin, glance_url, image, target, data)
    delete_and_check(glance, cinder, image.id)


def test_copy_image_into_an_unknown_store_leaves_nothing(glance, cinder,
                                                         images):
    data = pattern(MiB, 25)
    image = uploaded(glance, images, data, 'gold')
    before = set(fx.all_volumes(cinder))
    with pytest.raises(glance_exc.HTTPException) as err:
        glance.images.image_import(image.id, method='copy-image',
                                   stores=['no-such-store'])
    assert err.value.code in (400, 404, 409)
    image = glance.images.get(image.id)
    assert image.status == 'active' and stores_of(image) == {'gold'}
    assert not image.get('os_glance_import_task')
    assert set(fx.all_volumes(cinder)) == before


# -- failures in one store, retries ----------------------------------------

@contextlib.contextmanager
def silver_quota_exhausted(admin, cinder):
    """No more volumes of silver's type in the stores' (service) project."""
    ks = keystone_client.Client(session=admin, interface='public')
    (project,) = ks.projects.list(name='service')
    key = 'volumes_%s' % fx.TYPES['silver']
    quotas = cinder.quotas.get(project.id, usage=True)._info
    old = quotas[key]['limit']
    in_use = quotas[key]['in_use'] + quotas[key].get('reserved', 0)
    cinder.quotas.update(project.id, **{key: in_use})
    try:
        yield
    finally:
        cinder.quotas.update(project.id, **{key: old})


def test_failed_store_then_retried_by_copy_image(glance, cinder, images,
                                                 admin, glance_url,
                                                 all_stores):
    """all_stores_must_succeed=false: the others succeed; copy later."""
    data = pattern(MiB + 3, 26)
    image = staged(glance, images, data)
    with silver_quota_exhausted(admin, cinder):
        glance.images.image_import(image.id, method='glance-direct',
                                   all_stores=True, allow_failure=True)
        image = wait_import(glance, image.id)
    assert image.status == 'active'
    assert image.get('os_glance_failed_import') == 'silver'
    check_in(cinder, image, [s for s in all_stores if s != 'silver'], data)

    glance.images.image_import(image.id, method='copy-image',
                               stores=['silver'])
    image = wait_import(glance, image.id, tasks_before=1)
    assert not image.get('os_glance_failed_import')
    check_in(cinder, image, all_stores, data)
    download_from(admin, glance_url, image, 'silver', data)
    delete_and_check(glance, cinder, image.id)


def test_quota_exhausted_store_with_all_must_succeed_leaves_nothing(
        glance, cinder, images, admin):
    data = pattern(MiB + 5, 27)
    image = staged(glance, images, data)
    before = set(fx.all_volumes(cinder))
    with silver_quota_exhausted(admin, cinder):
        glance.images.image_import(image.id, method='glance-direct',
                                   stores=['gold', 'silver'],
                                   allow_failure=False)
        image = wait_import(glance, image.id)
    assert image.status != 'active'
    assert not stores_of(image)
    # (volumes of earlier tests may still be going away meanwhile)
    fx.wait_for(lambda: not set(fx.all_volumes(cinder)) - before,
                what='no volume left by the failed import')


def test_failed_upload_retried_at_once(glance, cinder, images, admin,
                                       glance_url):
    """The failed upload's volume may still be deleting: no Duplicate."""
    data = pattern(MiB + 9, 28)
    image = images()
    with pytest.raises(glance_exc.HTTPException):
        glance.images.upload(image.id, io.BytesIO(data[:-1]),
                             image_size=len(data), backend='gold')
    assert glance.images.get(image.id).status == 'queued'
    glance.images.upload(image.id, io.BytesIO(data), image_size=len(data),
                         backend='gold')
    image = glance.images.get(image.id)
    assert image.status == 'active'
    check_in(cinder, image, ['gold'], data)
    download_from(admin, glance_url, image, 'gold', data)
    delete_and_check(glance, cinder, image.id)
