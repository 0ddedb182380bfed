"""The glance-cinder-store demo (run by tools/demo with the aio venv python).

Against the all-in-one cloud of tools/aio, as the member user `demo`:

 1. build a raw disk image with real content (MBR + ext4 with files),
 2. upload it to the default store (gold) and download it: sha256 equal,
 3. show the Cinder volume that holds it,
 4. create a bootable volume (type glance-silver) from the image and show
    that Cinder cloned the image volume instead of downloading the image,
 5. upload that volume to a new image: Cinder clones it and registers the
    clone's location; the image lands in store `silver` (by volume type),
 6. delete everything and show that no volume, attachment or loop device
    is left.

``--store ceph`` runs the same job on the Ceph RBD store: the image goes to
store `ceph`, the volumes are of type glance-ceph, `rbd info` shows that
each clone is a copy-on-write child of its source, and at the end no RBD
image or temporary key file is left either.

Exit status 0 only when every check held.
"""

import argparse
import glob
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

from cinderclient import client as cinder_client
from glanceclient import client as glance_client

from aio_lib import common
from aio_lib import names

GOLD, SILVER = names.GOLD, names.SILVER

AIO_ROOT = common.AIO_ROOT
IP = os.environ.get('AIO_IP', '127.0.0.1')
PASSWORD = os.environ.get('AIO_PASSWORD', 'aio-secret')
LOOP_DIR = common.LOOP_DIR
CINDER_VOLUME_LOG = os.path.join(AIO_ROOT, 'logs/cinder-volume.log')
IMAGE_MIB = int(os.environ.get('DEMO_IMAGE_MIB', '128'))
MiB = 1024 * 1024
CHUNK = 4 * MiB
T0 = time.time()
FAILED = []
#: --store NAME: where the image goes, the type of the volume made from
#: it, and the store an upload of that volume must land in.
PROFILES = {
    names.DEFAULT_STORE: {
        'store': names.DEFAULT_STORE, 'backend': None,
        'type': names.TYPES[names.DEFAULT_STORE],
        'boot_type': names.TYPES[SILVER], 'upload_store': SILVER,
        'rbd': False},
    names.CEPH: {
        'store': names.CEPH, 'backend': names.CEPH,
        'type': names.CEPH_TYPES[names.CEPH],
        'boot_type': names.CEPH_TYPES[names.CEPH],
        'upload_store': names.CEPH, 'rbd': True},
}
RBD = ['rbd', '--id', 'cinder', '--pool', 'volumes']


def say(msg):
    print('[%6.1fs] %s' % (time.time() - T0, msg), flush=True)


def check(ok, what):
    say('  %s %s' % ('ok  ' if ok else 'FAIL', what))
    if not ok:
        FAILED.append(what)
    return ok


def step(title):
    say('== ' + title)


def clients(user, project):
    sess = common.session(user, project, password=PASSWORD,
                          auth_url='http://%s:5000/v3' % IP)
    return (sess, glance_client.Client('2', session=sess),
            cinder_client.Client('3.70', session=sess))


def wait_for(what, get, done, fail=(), timeout=300, every=0.5):
    """``get()`` until ``done`` says yes; stop early on a ``fail`` status."""
    def ready():
        obj = get()
        if done(obj):
            return obj
        status = getattr(obj, 'status', None) or obj.get('status')
        if status in fail:
            raise RuntimeError('%s went %s' % (what, status))
        return None
    return common.wait_for(ready, timeout, every, what)


def wait_volume_gone(cinder, volume_id, timeout=120):
    try:
        return common.wait_volume_gone(cinder, volume_id, timeout)
    except common.TimedOut:
        return False


def build_image(workdir):
    """Build a raw disk image with real content.

    MBR with one Linux partition at 1 MiB holding an ext4 filesystem with
    text, binary and zero-filled files (free space stays zero, so the image
    is neither all zeros nor all random).
    """
    tree = os.path.join(workdir, 'tree')
    for d in ('etc', 'boot', 'usr/share/doc/gcs-demo', 'var/lib/gcs-demo'):
        os.makedirs(os.path.join(tree, d))
    with open(os.path.join(tree, 'etc/hostname'), 'w') as f:
        f.write('gcs-demo\n')
    with open(os.path.join(tree, 'etc/motd'), 'w') as f:
        f.write('Stored on a Cinder volume by glance-cinder-store.\n')
    with open(os.path.join(tree, 'usr/share/doc/gcs-demo/README'), 'w') as f:
        for i in range(200000):  # ~12 MiB of compressible text
            f.write('line %06d: images live on cinder volumes, clones are '
                    'cheap\n' % i)
    with open(os.path.join(tree, 'boot/vmlinuz-demo'), 'wb') as f:
        f.write(os.urandom(16 * MiB))
    with open(os.path.join(tree, 'var/lib/gcs-demo/blob.bin'), 'wb') as f:
        f.write(os.urandom(8 * MiB))
    with open(os.path.join(tree, 'var/lib/gcs-demo/zeros.bin'), 'wb') as f:
        f.write(b'\0' * (4 * MiB))
    fs = os.path.join(workdir, 'fs.img')
    subprocess.run(['mkfs.ext4', '-q', '-F', '-L', 'gcs-demo', '-d', tree,
                    fs, '%dM' % (IMAGE_MIB - 1)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    disk = os.path.join(workdir, 'disk.img')
    sectors = (IMAGE_MIB - 1) * MiB // 512
    mbr = bytearray(512)
    mbr[440:444] = os.urandom(4)  # disk signature
    mbr[446:462] = struct.pack('<B3sB3sII', 0x80, b'\xfe\xff\xff', 0x83,
                               b'\xfe\xff\xff', 2048, sectors)
    mbr[510:512] = b'\x55\xaa'
    with open(disk, 'wb') as out, open(fs, 'rb') as src:
        out.write(mbr)
        out.truncate(MiB)
        out.seek(MiB)
        shutil.copyfileobj(src, out, CHUNK)
    os.unlink(fs)
    shutil.rmtree(tree)
    return disk


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK), b''):
            h.update(chunk)
    return h.hexdigest()


def download(glance, image_id, head_bytes=None):
    """Return (sha256, size, rest_is_zero) of the image data.

    With head_bytes, the sha256 covers only the first head_bytes and
    rest_is_zero tells whether everything after them is zeros.
    """
    h = hashlib.sha256()
    n = 0
    tail_zero = True
    for chunk in glance.images.data(image_id):
        if head_bytes is not None and n + len(chunk) > head_bytes:
            cut = max(0, head_bytes - n)
            h.update(chunk[:cut])
            tail_zero = tail_zero and not chunk[cut:].strip(b'\0')
        else:
            h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n, tail_zero


def log_offset():
    try:
        return os.path.getsize(CINDER_VOLUME_LOG)
    except OSError:
        return 0


def log_since(offset):
    with open(CINDER_VOLUME_LOG, errors='replace') as f:
        f.seek(offset)
        return f.read()


def volume_of_location(url):
    return url.rstrip('/').split('/')[-1]


def loops_on_our_files():
    """{loop device: volume file} of Cinder's loop backend."""
    return common.loop_devices(under=LOOP_DIR)


def rbd_parent(volume_id):
    """The RBD parent (pool/image@snap) of a Ceph volume, or None."""
    out = subprocess.run(RBD + ['info', 'volume-%s' % volume_id],
                         capture_output=True, text=True).stdout
    found = re.search(r'parent: (\S+)', out)
    return found.group(1) if found else None


def rbd_images():
    """(live images, Cinder's silent references named <image>.deleted).

    Cinder's RBD driver keeps a deleted volume that ever had a
    copy-on-write clone as <image>.deleted, with the clone's snapshot,
    even after the clone is gone: Cinder's leftover, reported apart.
    """
    names = subprocess.run(RBD + ['ls'], capture_output=True, text=True,
                           check=True).stdout.split()
    return ([n for n in names if not n.endswith('.deleted')],
            [n for n in names if n.endswith('.deleted')])


def key_files():
    """os-brick's temporary ceph.conf files, which hold the key."""
    return set(glob.glob('/tmp/brickrbd_*'))


def show_volume(vol, label):
    say('  %s %s: size %s GiB, type %s, status %s, bootable %s, project %s'
        % (label, vol.id, vol.size, vol.volume_type, vol.status,
           vol.bootable, getattr(vol, 'os-vol-tenant-attr:tenant_id', '?')))
    say('    metadata: %s' % dict(sorted(vol.metadata.items())))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--store', choices=sorted(PROFILES), default='gold',
                        help='run the job on this store (default: gold, '
                             'the default store)')
    profile = PROFILES[parser.parse_args(argv).store]
    keys_before = key_files() if profile['rbd'] else set()
    workdir = tempfile.mkdtemp(prefix='gcs-demo-', dir='/var/tmp')
    _, glance, cinder = clients('demo', 'demo')
    _, admin_glance, admin_cinder = clients('admin', 'admin')
    # the glance service user has the `service` role: it may read locations
    _, service_glance, _ = clients('glance', 'service')
    made = {'images': [], 'volumes': []}
    made_ever = {'images': [], 'volumes': []}
    stats = {}
    try:
        step('1. build a raw disk image (MBR + ext4 with files)')
        t = time.time()
        disk = build_image(workdir)
        size = os.path.getsize(disk)
        digest = sha256_file(disk)
        allocated = os.stat(disk).st_blocks * 512
        say('  %s: %d MiB, %d MiB allocated, sha256 %s... (%.1fs)'
            % (disk, size // MiB, allocated // MiB, digest[:16],
               time.time() - t))

        step('2. upload to store %s, download, compare' % profile['store'])
        t = time.time()
        image = glance.images.create(name='gcs-demo-disk', disk_format='raw',
                                     container_format='bare')
        made['images'].append(image.id)
        made_ever['images'].append(image.id)
        with open(disk, 'rb') as f:
            if profile['backend']:
                glance.images.upload(image.id, f, image_size=size,
                                     backend=profile['backend'])
            else:
                glance.images.upload(image.id, f, image_size=size)
        image = glance.images.get(image.id)
        stats['upload'] = time.time() - t
        say('  image %s %s, %d bytes, store %s (upload %.1fs, %.0f MiB/s)'
            % (image.id, image.status, image.size, image.stores,
               stats['upload'], size / MiB / stats['upload']))
        check(image.status == 'active', 'image is active')
        check(image.stores == profile['store'],
              'image landed in store %s' % profile['store'])
        check(image.size == size, 'image size is the file size')
        t = time.time()
        got, n, _ = download(glance, image.id)
        stats['download'] = time.time() - t
        say('  downloaded %d bytes in %.1fs (%.0f MiB/s)'
            % (n, stats['download'], n / MiB / stats['download']))
        check(got == digest, 'downloaded sha256 equals the original')

        step('3. the volume that holds the image')
        locations = service_glance.images.get_image_locations(image.id)
        say('  locations: %s' % [(x['url'], x['metadata']) for x in locations])
        check(len(locations) == 1 and locations[0]['url'].startswith(
            'cinder://%s/' % profile['store']),
            'one location cinder://%s/<volume>' % profile['store'])
        image_volume = admin_cinder.volumes.get(
            volume_of_location(locations[0]['url']))
        made_ever['volumes'].append(image_volume.id)
        show_volume(image_volume, 'image volume')
        check(image_volume.volume_type == profile['type'],
              'image volume has the store volume type %s' % profile['type'])
        check(image_volume.metadata.get('glance_image_id') == image.id,
              'image volume metadata names the image')
        check(image_volume.metadata.get('readonly') == 'True',
              'image volume is flagged read-only')

        step('4. bootable volume from the image (type %s)'
             % profile['boot_type'])
        t = time.time()
        offset = log_offset()
        boot = cinder.volumes.create(size=1, imageRef=image.id,
                                     volume_type=profile['boot_type'],
                                     name='gcs-demo-boot')
        made['volumes'].append(boot.id)
        made_ever['volumes'].append(boot.id)
        boot = wait_for('volume %s' % boot.id,
                        lambda: cinder.volumes.get(boot.id),
                        lambda v: v.status == 'available',
                        fail=('error',))
        stats['clone'] = time.time() - t
        show_volume(boot, 'new volume')
        say('  available in %.1fs' % stats['clone'])
        logged = log_since(offset)
        clone_line = re.search(
            r'Will clone a volume from the image volume %s' % image_volume.id,
            logged)
        say('  cinder-volume.log: %s' % (
            clone_line.group(0) if clone_line else 'no clone line'))
        check(bool(clone_line), 'cinder cloned the image volume (log)')
        check('Downloaded image' not in logged and
              'copy_image_to_volume' not in logged,
              'cinder did not download the image')
        check(boot.bootable == 'true', 'new volume is bootable')
        if profile['rbd']:
            parent = rbd_parent(boot.id)
            say('  rbd info volumes/volume-%s: parent %s' % (boot.id, parent))
            check(bool(parent) and parent.startswith(
                'volumes/volume-%s@' % image_volume.id),
                'the new volume is an RBD copy-on-write clone of the image '
                'volume (no bytes copied)')

        step('5. upload the volume to a new image (clone + location)')
        t = time.time()
        resp = cinder.volumes.upload_to_image(
            boot, False, 'gcs-demo-from-volume', 'bare', 'raw',
            visibility='private', protected=False)
        new_id = resp[1]['os-volume_upload_image']['image_id']
        made['images'].append(new_id)
        made_ever['images'].append(new_id)
        wait_for('volume %s' % boot.id, lambda: cinder.volumes.get(boot.id),
                 lambda v: v.status == 'available', fail=('error',))
        new = wait_for('image %s' % new_id, lambda: glance.images.get(new_id),
                       lambda i: i.status == 'active',
                       fail=('killed', 'deleted'))
        stats['upload-volume'] = time.time() - t
        # Glance marks the image active at once and hashes the volume's data
        # in the background (location_import): wait for that to finish
        new = wait_for('image %s hash' % new_id,
                       lambda: glance.images.get(new_id),
                       lambda i: i.os_hash_value, fail=('killed', 'deleted'))
        stats['hashed'] = time.time() - t
        say('  image %s %s, %d bytes, store %s (active in %.1fs, hashed by '
            'glance in %.1fs)' % (new.id, new.status, new.size, new.stores,
                                  stats['upload-volume'], stats['hashed']))
        check(new.stores == profile['upload_store'],
              'image landed in store %s (chosen by volume type)'
              % profile['upload_store'])
        locations = service_glance.images.get_image_locations(new.id)
        say('  locations: %s' % [(x['url'], x['metadata']) for x in locations])
        clone = admin_cinder.volumes.get(
            volume_of_location(locations[0]['url']))
        made['volumes'].append(clone.id)
        made_ever['volumes'].append(clone.id)
        show_volume(clone, 'image volume')
        check(getattr(clone, 'source_volid', None) == boot.id,
              'its volume is a Cinder clone of the uploaded volume')
        if profile['rbd']:
            parent = rbd_parent(clone.id)
            say('  rbd info volumes/volume-%s: parent %s' % (clone.id, parent))
            check(bool(parent) and parent.startswith(
                'volumes/volume-%s@' % boot.id),
                'its RBD image is a copy-on-write clone of the volume')
        t = time.time()
        got, n, zero = download(glance, new.id, head_bytes=size)
        say('  downloaded %d bytes in %.1fs' % (n, time.time() - t))
        check(got == digest and zero,
              'new image = original image + zero padding')

        step('6. delete everything')
        t = time.time()
        for image_id in made['images']:
            glance.images.delete(image_id)
        cinder.volumes.delete(boot.id)
        gone = [wait_volume_gone(admin_cinder, v) for v in
                (image_volume.id, boot.id, clone.id)]
        stats['delete'] = time.time() - t
        check(all(gone), 'the three volumes are gone (%.1fs)'
              % stats['delete'])
        made = {'images': [], 'volumes': []}
    except Exception as exc:  # noqa: BLE001 - report and clean up
        check(False, 'unexpected error: %r' % exc)
    finally:
        _cleanup(glance, admin_cinder, made)
        shutil.rmtree(workdir, ignore_errors=True)

    # what is left of the demo's images and volumes (other users' objects
    # on the same cloud are not the demo's business)
    seen = set(made_ever['volumes'])
    leftovers = [v.id for v in admin_cinder.volumes.list(
        search_opts={'all_tenants': 1})
        if v.id in seen or v.metadata.get('glance_image_id') in
        made_ever['images']]
    attachments = [a.id for a in admin_cinder.attachments.list(
        search_opts={'all_tenants': 1}) if a.volume_id in seen]
    loops = [device for device, backing in loops_on_our_files().items()
             if any(v in backing for v in seen)]
    files = [n for n in (os.listdir(LOOP_DIR) if os.path.isdir(LOOP_DIR)
                         else []) if any(v in n for v in seen)]
    say('  left: %d volume(s), %d attachment(s), %d loop device(s), '
        '%d volume file(s)' % (len(leftovers), len(attachments), len(loops),
                               len(files)))
    say('  whole cloud: %d loop device(s) on volume files'
        % len(loops_on_our_files()))
    check(not leftovers and not attachments and not loops and not files,
          'no volume, attachment, loop device or volume file is left')
    if profile['rbd']:
        def ours_in_ceph():
            live, silent = rbd_images()
            return ([n for n in live if any(v in n for v in seen)],
                    [n for n in silent if any(v in n for v in seen)])
        try:    # cinder deletes volumes in the background
            common.wait_for(lambda: not ours_in_ceph()[0], 60, 1,
                            'RBD images deleted')
        except common.TimedOut:
            pass
        images, silent = ours_in_ceph()
        keys = key_files() - keys_before
        say('  left in Ceph: %d RBD image(s) %s; %d temporary key file(s)'
            % (len(images), images, len(keys)))
        if silent:
            say('  (Cinder keeps %d deleted clone parent(s) as silent '
                'references: %s)' % (len(silent), silent))
        check(not images and not keys,
              'no RBD image and no temporary key file is left')
    summary = ', '.join('%s %.1fs' % kv for kv in stats.items())
    if FAILED:
        say('DEMO FAILED (%d check(s)): %s' % (len(FAILED), '; '.join(FAILED)))
        return 1
    say('DEMO PASSED in %.1fs (%s)' % (time.time() - T0, summary))
    return 0


def _cleanup(glance, admin_cinder, made):
    for image_id in made['images']:
        try:
            glance.images.delete(image_id)
        except Exception:  # noqa: BLE001
            pass
    for volume_id in made['volumes']:
        try:
            admin_cinder.volumes.delete(volume_id)
        except Exception:  # noqa: BLE001
            pass
    for volume_id in made['volumes']:
        wait_volume_gone(admin_cinder, volume_id, timeout=60)


if __name__ == '__main__':
    sys.exit(main())
