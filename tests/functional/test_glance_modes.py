"""Configurations the cloud does not serve, each in a glance-api of its own.

A store whose volume type does not exist; the legacy single-store mode
(``[glance_store] stores = cinder_plus``, ``default_store = cinder``); and
per-user mode (no ``cinder_store_*`` credentials: volumes in the requesting
user's project).  See extra_glance for how the glance-api is run.
"""

import hashlib
import io
import os
import subprocess

from cinderclient import client as cinder_client
from cinderclient import exceptions as cinder_exc
from glanceclient import client as glance_client
from glanceclient import exc as glance_exc
from keystoneclient.v3 import client as keystone_client
import pytest

from tests.functional import conftest as fx
from tests.functional import extra_glance
from tests.functional.test_images import pattern

names = fx.names

MiB = 1024 * 1024
#: A volume type no store of the cloud's glance-api has: images written by
#: the extra glance-api are not reassigned to one of its stores.
EXTRA_TYPE = 'gcs-test-extra'
DRIVER = 'cinder_plus'


@pytest.fixture(scope='module', autouse=True)
def cloud_is_ours():
    if os.environ.get('GCS_CLOUD') == 'external':
        pytest.skip('starts a glance-api on this host (tools/aio only)')


@pytest.fixture(scope='module')
def extra_type(cinder):
    vtype = cinder.volume_types.create(EXTRA_TYPE)
    vtype.set_keys({'volume_backend_name': 'loop'})
    yield EXTRA_TYPE
    cinder.volume_types.delete(vtype)


def client(api, user='admin'):
    return glance_client.Client('2', endpoint=api.url,
                                session=fx.session_for(user))


def store_group(**changes):
    """The cloud's [gold] options with ``changes`` (None: drop the key)."""
    group = dict(extra_glance.cloud_config()['gold'])
    for key, value in changes.items():
        if value is None:
            group.pop(key, None)
        else:
            group[key] = value
    return group


def without_stores():
    """The cloud's glance-api.conf less its stores."""
    sections = extra_glance.cloud_config()
    for entry in sections['DEFAULT'].pop('enabled_backends').split(','):
        sections.pop(entry.split(':')[0].strip(), None)
    return sections


def config(stores, default_backend):
    """The cloud's glance-api.conf with ``stores`` (id -> group) only."""
    sections = without_stores()
    sections['DEFAULT']['enabled_backends'] = ', '.join(
        '%s:%s' % (sid, DRIVER) for sid in stores)
    sections['glance_store'] = {'default_backend': default_backend}
    sections.update(stores)
    return sections


def legacy_config(driver, volume_type):
    sections = without_stores()
    sections['glance_store'] = store_group(
        stores=driver, default_store='cinder',
        cinder_volume_type=volume_type, store_description=None)
    return sections


def upload(glance, data, **kwargs):
    image = glance.images.create(disk_format='raw', container_format='bare',
                                 name='gcs-func-modes', **kwargs)
    try:
        glance.images.upload(image.id, io.BytesIO(data),
                             image_size=len(data))
    except BaseException:
        glance.images.delete(image.id)
        raise
    return glance.images.get(image.id)


def read_back(glance, image, data):
    got = b''.join(glance.images.data(image.id))
    assert got == data
    assert hashlib.sha512(got).hexdigest() == image.os_hash_value


def delete(glance, cinder, image):
    vols = fx.image_volumes(cinder, image.id)
    glance.images.delete(image.id)
    for vol in vols.values():
        fx.wait_gone(cinder, vol.id)


# -- a store whose volume type does not exist -------------------------------

@pytest.fixture(scope='module')
def broken_api():
    stores = {'gold': store_group(),
              names.BROKEN: store_group(
                  cinder_volume_type=names.MISSING_TYPE,
                  store_description='volume type missing (test)')}
    with extra_glance.running('broken', config(stores, 'gold')) as api:
        yield api


def test_store_with_a_missing_volume_type_is_a_clear_error(broken_api,
                                                           cinder):
    glance = client(broken_api)
    before = set(fx.all_volumes(cinder))
    image = glance.images.create(disk_format='raw', container_format='bare',
                                 name='gcs-func-broken')
    try:
        with pytest.raises(glance_exc.HTTPException) as err:
            glance.images.upload(image.id, io.BytesIO(b'x' * 100),
                                 image_size=100, backend=names.BROKEN)
        assert err.value.code == 503
        assert names.MISSING_TYPE in str(err.value)
        assert glance.images.get(image.id).status == 'queued'
        assert not set(fx.all_volumes(cinder)) - before
    finally:
        glance.images.delete(image.id)


def test_preflight_check_names_the_missing_volume_type(broken_api):
    conf = os.path.join(broken_api.confdir, 'glance-api.conf')
    out = subprocess.run(
        ['sudo', '-u', 'glance',
         os.path.join(extra_glance.VENV, 'bin', 'glance-cinder-store-check'),
         '--config-file', conf], capture_output=True, text=True, timeout=300,
        cwd='/')
    fails = [line for line in out.stdout.splitlines()
             if line.startswith('FAIL')]
    assert out.returncode == 1
    assert any(names.BROKEN in f and 'volume type' in f for f in fails), (
        out.stdout + out.stderr)
    assert not any('gold' in f for f in fails), fails


# -- legacy single store -----------------------------------------------------

def test_legacy_single_store(extra_type, cinder, volumes):
    """Built-in driver's cinder://<volume> images read, written, cloned."""
    data = pattern(MiB + 31, 31)
    with extra_glance.running('legacy-builtin',
                              legacy_config('cinder', extra_type)) as api:
        glance = client(api)
        old = upload(glance, data)
    with extra_glance.running('legacy', legacy_config(DRIVER,
                                                      extra_type)) as api:
        glance = client(api)
        service = glance_client.Client('2', endpoint=api.url,
                                       session=fx.session_for('glance'))
        (loc,) = service.images.get_image_locations(old.id)
        assert loc['url'].startswith('cinder://')
        assert loc['url'].count('/') == 2, 'legacy URL: cinder://<volume>'
        read_back(glance, old, data)

        new_data = pattern(2 * MiB + 5, 32)
        new = upload(glance, new_data)
        (loc,) = service.images.get_image_locations(new.id)
        (vol,) = fx.image_volumes(cinder, new.id).values()
        assert loc['url'] == 'cinder://%s' % vol.id
        assert vol.volume_type == extra_type
        assert vol.metadata['image_size'] == str(len(new_data))
        read_back(glance, new, new_data)

        # Cinder's clone path (it asks the cloud's glance-api, which shares
        # the database) takes the legacy location as it is
        mark = fx.log_mark()
        clone = volumes(size=1, imageRef=new.id, name='gcs-func-legacy')
        fx.wait_volume(cinder, clone.id, timeout=180)
        assert 'Will clone a volume from the image volume %s' % vol.id in (
            fx.log_since(mark))

        delete(glance, cinder, old)
        delete(glance, cinder, new)


# -- per-user mode -----------------------------------------------------------

@pytest.fixture(scope='module')
def per_user_api(extra_type):
    keys = [k for k in store_group() if k.startswith('cinder_store_')]
    group = store_group(cinder_volume_type=extra_type,
                        store_description='per-user volumes (test)',
                        **dict.fromkeys(keys))
    with extra_glance.running('per-user',
                              config({'mine': group}, 'mine')) as api:
        yield api


def project_id(name):
    ks = keystone_client.Client(session=fx.session_for('admin'),
                                interface='public')
    (project,) = ks.projects.list(name=name)
    return project.id


def test_per_user_volumes_live_in_the_users_project(per_user_api, cinder):
    demo = client(per_user_api, 'demo')
    data = pattern(MiB + 41, 41)
    image = upload(demo, data)
    try:
        assert image.status == 'active' and image.stores == 'mine'
        (vol,) = fx.image_volumes(cinder, image.id).values()
        assert getattr(vol, 'os-vol-tenant-attr:tenant_id') == project_id(
            'demo')
        assert vol.metadata['image_owner'] == image.owner
        read_back(demo, image, data)
        # the admin reads it too (Cinder lets admins see every project)
        read_back(client(per_user_api), image, data)
    finally:
        delete(demo, cinder, image)


def test_per_user_shared_image_is_a_clear_error_for_members(per_user_api,
                                                            cinder):
    """Cinder lets no other project read the volume: documented limit."""
    demo = client(per_user_api, 'demo')
    other = client(per_user_api, 'other')
    data = pattern(MiB + 43, 43)
    image = upload(demo, data, visibility='shared')
    try:
        other_id = project_id('other')
        demo.image_members.create(image.id, other_id)
        other.image_members.update(image.id, other_id, 'accepted')
        assert other.images.get(image.id).status == 'active'
        mark = fx.log_mark(per_user_api.log)
        resp = fx.session_for('other').get(
            '%s/v2/images/%s/file' % (per_user_api.url, image.id),
            raise_exc=False)
        # Glance answers a store's NotFound with 204 and no data; the
        # reason is in glance-api's log
        assert resp.status_code == 204 and not resp.content
        assert 'per-user mode' in fx.log_since(mark, per_user_api.log)
        (vol,) = fx.image_volumes(cinder, image.id).values()
        with pytest.raises(cinder_exc.NotFound):
            cinder_client.Client('3.70', session=fx.session_for(
                'other')).volumes.get(vol.id)
        read_back(demo, image, data)    # the owner still can
    finally:
        delete(demo, cinder, image)
