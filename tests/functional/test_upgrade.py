"""Upgrade from the built-in ``cinder`` driver to ``cinder_plus``, and back.

What an operator does (doc/source/upgrade.rst): change a live store's type
in ``enabled_backends`` and restart glance-api, with images in the store.
Each driver must then read, delete and let Cinder clone the images the
other one wrote, and uploads go on.  The aio's store ``builtin`` is
switched over and back (``tools/aio set-store-type``); its original
configuration is restored whatever happens.
"""

import io
import os
import subprocess

import pytest

from tests.functional import conftest as fx
from tests.functional.test_images import pattern

STORE = fx.names.BUILTIN
GLANCE_LOG = os.path.join(fx.AIO_ROOT, 'logs', 'glance-api.log')
MiB = 1024 * 1024


def set_store_type(kind):
    out = subprocess.run([fx.common.AIO, 'set-store-type', STORE, kind],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def switchable():
    """Put glance-api.conf back as it was, and glance-api with it."""
    with open(fx.GLANCE_CONF, 'rb') as f:
        original = f.read()
    yield
    with open(fx.GLANCE_CONF, 'rb') as f:
        changed = f.read() != original
    if changed:
        with open(fx.GLANCE_CONF, 'wb') as f:    # in place: owner, mode
            f.write(original)
        subprocess.run([fx.common.AIO, 'restart', 'glance-api'],
                       capture_output=True, timeout=180, check=True)


def upload(glance, images, data):
    image = images()
    glance.images.upload(image.id, io.BytesIO(data), image_size=len(data),
                         backend=STORE)
    image = glance.images.get(image.id)
    assert image.status == 'active' and image.stores == STORE
    return image


def written_by_ours(mark, image_id):
    return ('store %s: image %s written to volume' % (STORE, image_id)
            in fx.log_since(mark, GLANCE_LOG))


def other_drivers_images_work(glance, cinder, volumes, written, keep):
    """Read all of ``written``, clone ``keep``, delete the others."""
    for image, data in written:
        assert b''.join(glance.images.data(image.id)) == data, image.id
    image, data = keep
    source = fx.image_volume(cinder, image.id)
    mark = fx.log_mark()
    clone = volumes(size=1, imageRef=image.id,
                    volume_type=fx.TYPES[STORE])
    fx.wait_volume(cinder, clone.id)
    assert ('Will clone a volume from the image volume %s' % source.id
            in fx.log_since(mark))
    assert fx.read_volume(clone.id, len(data)) == data
    for image, _ in written:
        if image.id != keep[0].id:
            gone = fx.image_volume(cinder, image.id)
            glance.images.delete(image.id)
            fx.wait_gone(cinder, gone.id)


def test_switch_a_live_store_to_cinder_plus_and_back(
        glance, cinder, images, volumes, switchable):
    with open(fx.GLANCE_CONF) as f:
        assert ' %s:cinder,' % STORE in f.read(), 'store %s is not ' \
            'of the built-in driver to start with' % STORE
    mark = fx.log_mark(GLANCE_LOG)
    builtin_images = [(upload(glance, images, d), d) for d in (
        pattern(MiB + 7, 21), pattern(2 * MiB, 22))]
    assert not any(written_by_ours(mark, i.id) for i, _ in builtin_images)

    set_store_type('cinder_plus')
    mark = fx.log_mark(GLANCE_LOG)
    other_drivers_images_work(glance, cinder, volumes, builtin_images,
                              keep=builtin_images[0])
    data = pattern(MiB + 3, 23)
    ours = upload(glance, images, data)
    assert written_by_ours(mark, ours.id)
    ours_images = [(ours, data), (upload(glance, images, pattern(MiB, 24)),
                                  pattern(MiB, 24))]

    set_store_type('cinder')        # rollback
    mark = fx.log_mark(GLANCE_LOG)
    other_drivers_images_work(glance, cinder, volumes,
                              ours_images + builtin_images[:1],
                              keep=ours_images[0])
    data = pattern(MiB + 5, 25)
    theirs = upload(glance, images, data)
    assert not written_by_ours(mark, theirs.id)
    assert b''.join(glance.images.data(theirs.id)) == data
