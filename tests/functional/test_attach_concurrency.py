"""Shared attachments under real concurrency: processes, kills, nova, delete.

Readers here are separate processes (tests/functional/reader.py) using our
driver against the real Cinder and loop devices, sharing one state folder
as glance-api workers on one host do.
"""

import hashlib
import io
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from glance_store import exceptions
from glance_store import location as gs_location
import pytest

from glance_cinder_store.cinder import RELEASE_MARK
from tests.functional import conftest as fx
from tests.functional import test_driver
from tests.functional.test_images import pattern

MiB = 1024 * 1024
SIZE = 24 * MiB


@pytest.fixture(scope='module')
def image(glance, cinder):
    data = pattern(SIZE, 5)
    img = glance.images.create(name='gcs-func-concurrency',
                               disk_format='raw', container_format='bare')
    glance.images.upload(img.id, io.BytesIO(data), image_size=len(data),
                         backend='gold')
    vol = fx.without_warm_up(cinder, fx.image_volume(cinder, img.id).id)
    yield img, vol, hashlib.sha256(data).hexdigest()
    glance.images.delete(img.id)
    fx.wait_gone(cinder, vol.id)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / 'state'
    path.mkdir()
    return str(path)


def start_reader(state_dir, volume_id, delay, env=None):
    return subprocess.Popen(
        [sys.executable, '-m', 'tests.functional.reader', state_dir,
         volume_id, str(delay)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=fx.REPO, env=dict(os.environ, **(env or {})))


def wait_line(proc, word, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith(word):
            return line.split()
        if not line and proc.poll() is not None:
            raise AssertionError('reader exited: %s' % proc.stderr.read())
    raise AssertionError('reader never said %r' % word)


def our_attachments(cinder, volume_id):
    vol = cinder.volumes.get(volume_id)
    return [a for a in vol.attachments
            if a.get('host_name') == socket.gethostname()]


def store_and_location(state_dir, volume_id, **overrides):
    """Our driver, as one more glance-api process of this host would be."""
    store = test_driver.make_store(state_dir, **overrides)
    loc = gs_location.get_location_from_uri_and_backend(
        'cinder://gold/%s' % volume_id, 'gold', conf=store.conf)
    return store, loc


def read_all(store, loc):
    return b''.join(store.get(loc, context=test_driver.Context('x'))[0])


def image_being_read(glance, cinder, images, state_dir, delay):
    """An 8 MiB image and a reader process that takes ~8 x delay on it."""
    data = pattern(8 * MiB, 9)
    img = images()
    glance.images.upload(img.id, io.BytesIO(data), image_size=len(data),
                         backend='gold')
    vol = fx.without_warm_up(cinder, fx.image_volume(cinder, img.id).id)
    reader = start_reader(state_dir, vol.id, delay)
    wait_line(reader, 'attached')
    return data, vol, reader


def assert_clean(cinder, volume_id, state_dir):
    fx.wait_for(lambda: not cinder.volumes.get(volume_id).attachments,
                timeout=30, what='attachments of %s gone' % volume_id)
    assert not fx.loops_of(volume_id)
    assert not os.listdir(os.path.join(state_dir, 'attachments'))


def _http_download(args):
    url, token, image_id, n_threads = args
    import requests
    results = []

    def one():
        t0 = time.time()
        try:
            resp = requests.get('%s/v2/images/%s/file' % (url, image_id),
                                headers={'X-Auth-Token': token},
                                timeout=300)
            ok = resp.status_code == 200
            digest = hashlib.sha256(resp.content).hexdigest()
        except Exception as e:
            ok, digest = False, repr(e)
        results.append((ok, digest, time.time() - t0))
    threads = [threading.Thread(target=one) for _ in range(n_threads)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return results


def concurrent_downloads(admin, glance_url, image_id, volume_id, cinder):
    """16 downloads from 4 processes; returns results and peak attachments."""
    token = admin.get_token()
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], len(our_attachments(cinder, volume_id)))
            time.sleep(0.05)
    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.time()
    ctx = multiprocessing.get_context('spawn')
    with ctx.Pool(4) as pool:
        results = sum(pool.map(_http_download, [
            (glance_url, token, image_id, 4)] * 4), [])
    wall = time.time() - t0
    stop.set()
    watcher.join()
    return results, wall, peak[0]


def test_16_downloads_from_4_processes_share_one_attachment(
        image, admin, glance_url, cinder):
    img, vol, sha = image
    results, wall, peak = concurrent_downloads(admin, glance_url, img.id,
                                               vol.id, cinder)
    failures = [r for r in results if not r[0]]
    print('\nours: 16 downloads, %d failed, wall %.1fs, peak attachments %d'
          % (len(failures), wall, peak))
    assert not failures
    assert all(r[1] == sha for r in results)
    assert peak == 1
    # glance-api keeps it warm (idle) for the next download, and lets go
    # within seconds when another host asks for the volume
    assert len(our_attachments(cinder, vol.id)) == 1
    cinder.volumes.set_metadata(vol.id, {RELEASE_MARK: 'wanted'})
    fx.wait_for(lambda: not cinder.volumes.get(vol.id).attachments,
                timeout=60, what='warm attachment released on request')
    cinder.volumes.delete_metadata(vol.id, [RELEASE_MARK])


def test_killed_reader_does_not_hurt_the_others(image, cinder, state_dir):
    img, vol, sha = image
    readers = [start_reader(state_dir, vol.id, 0.05) for _ in range(3)]
    for r in readers:
        wait_line(r, 'attached')
    assert len(fx.cinder_attachments(cinder, vol.id)) == 1
    readers[0].send_signal(signal.SIGKILL)
    readers[0].wait()
    for r in readers[1:]:
        assert wait_line(r, 'done')[1] == sha
        r.wait()
    # the very next get works at once, and the killed holder is gone
    t0 = time.time()
    store, loc = store_and_location(state_dir, vol.id)
    body = read_all(store, loc)
    elapsed = time.time() - t0
    print('\nnext get after a killed reader: %.2fs' % elapsed)
    assert hashlib.sha256(body).hexdigest() == sha
    assert elapsed < 10
    assert_clean(cinder, vol.id, state_dir)


@pytest.mark.parametrize('point', ['attaching', 'detaching'])
def test_killed_during_attach_or_detach_is_recovered(image, cinder,
                                                     state_dir, tmp_path,
                                                     point):
    img, vol, sha = image
    marker = str(tmp_path / 'paused')
    proc = start_reader(state_dir, vol.id, 0, env={
        'GLANCE_CINDER_STORE_PAUSE_AT': '%s:%s' % (point, marker)})
    fx.wait_for(lambda: os.path.exists(marker), timeout=120,
                what='reader paused at %s' % point)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # it did leave one behind (still 'reserved' if killed while attaching)
    assert fx.cinder_attachments(cinder, vol.id)
    t0 = time.time()
    store, loc = store_and_location(state_dir, vol.id)
    body = read_all(store, loc)
    print('\nget after a kill while %s: %.2fs' % (point, time.time() - t0))
    assert hashlib.sha256(body).hexdigest() == sha
    assert_clean(cinder, vol.id, state_dir)


def test_cleanup_tool_recovers_without_a_next_reader(image, cinder,
                                                     state_dir, tmp_path):
    img, vol, sha = image
    proc = start_reader(state_dir, vol.id, 0.5)
    wait_line(proc, 'attached')
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert fx.cinder_attachments(cinder, vol.id)
    store, _ = store_and_location(state_dir, vol.id)
    assert store.attachments.recover(store.volumes()) == [vol.id]
    assert_clean(cinder, vol.id, state_dir)


def test_foreign_attachment_on_this_host_survives_our_detach(
        image, cinder, state_dir):
    img, vol, sha = image
    # Another user of the volume on this host (as nova would attach it; no
    # instance id, since deleting an instance's attachment makes Cinder
    # call nova, which this cloud does not have).
    connector = {'host': socket.gethostname(), 'initiator': 'nova-like',
                 'mountpoint': '/dev/vdb', 'ip': '127.0.0.1',
                 'platform': 'x86_64', 'os_type': 'linux',
                 'multipath': False}
    nova = cinder.attachments.create(vol.id, connector, mode='ro')
    cinder.attachments.complete(nova['id'])       # "nova" connected it
    try:
        device = nova['connection_info']['device_path']
        store, loc = store_and_location(state_dir, vol.id)
        body = read_all(store, loc)
        assert hashlib.sha256(body).hexdigest() == sha
        atts = cinder.volumes.get(vol.id).attachments
        assert [a['attachment_id'] for a in atts] == [nova['id']]
        assert os.path.exists(device) and fx.loops_of(vol.id)
        with open(device, 'rb') as f:       # still usable by "nova"
            assert f.read(4096) == pattern(4096, 5)
    finally:
        cinder.attachments.delete(nova['id'])
    fx.wait_for(lambda: not fx.loops_of(vol.id), timeout=30,
                what='loop device released')


def test_delete_while_downloading_waits_for_the_reader(glance, cinder,
                                                       state_dir, images):
    data, vol, reader = image_being_read(glance, cinder, images, state_dir,
                                         0.3)      # ~2.5 s
    store, loc = store_and_location(state_dir, vol.id)
    t0 = time.time()
    store.delete(loc, context=test_driver.Context('x'))
    waited = time.time() - t0
    assert wait_line(reader, 'done')[1] == hashlib.sha256(data).hexdigest()
    assert waited > 0.5
    fx.wait_gone(cinder, vol.id)


def test_delete_waits_for_a_reader_of_a_process_that_stays(
        glance, cinder, state_dir, images):
    """As in a glance-api worker: the download ends, the process lives on.

    The reader's attachment goes warm when it ends, during the delete's
    wait; the delete must let go of it, not wait for the grace period.
    """
    data = pattern(8 * MiB, 9)
    img = images()
    glance.images.upload(img.id, io.BytesIO(data), image_size=len(data),
                         backend='gold')
    vol = fx.without_warm_up(cinder, fx.image_volume(cinder, img.id).id)
    store, loc = store_and_location(
        state_dir, vol.id, cinder_plus_attach_grace_period=300,
        cinder_plus_io_chunk_size=MiB, cinder_state_transition_timeout=30)
    body, _ = store.get(loc, context=test_driver.Context('x'))
    read = [next(body)]

    def finish_slowly():
        time.sleep(2)
        read.extend(body)
        body.close()
    reader = threading.Thread(target=finish_slowly)
    reader.start()
    t0 = time.time()
    store.delete(loc, context=test_driver.Context('x'))
    waited = time.time() - t0
    reader.join()
    print('\ndelete waited %.1f s for the reader' % waited)
    assert b''.join(read) == data
    assert 1.5 < waited < 15
    fx.wait_gone(cinder, vol.id)
    assert not fx.loops_of(vol.id)
    assert not os.listdir(os.path.join(state_dir, 'attachments'))


def test_delete_gives_up_clearly_when_readers_stay(glance, cinder,
                                                   state_dir, images):
    data, vol, reader = image_being_read(glance, cinder, images, state_dir,
                                         1.0)      # ~8 s
    store, loc = store_and_location(state_dir, vol.id,
                                    cinder_state_transition_timeout=2)
    with pytest.raises(exceptions.InUseByStore, match='still attached'):
        store.delete(loc, context=test_driver.Context('x'))
    assert wait_line(reader, 'done')
    reader.wait()
    assert cinder.volumes.get(vol.id).status == 'available'
