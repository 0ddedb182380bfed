"""The optional volume pool against the real Cinder.

An add claims a ready pool volume, already attached to this host (no volume
create and no attach on its path), the pool is refilled in the background,
closing the store deletes its pool, and the pool of a killed process
(attached, too) is detached and deleted by the self-healing reconciler of
a store that has the pool turned off.
"""

import io
import os
import select
import signal
import subprocess
import sys
import time
import uuid

from glance_store import location as gs_location

from glance_cinder_store import heal
from glance_cinder_store import holders
from glance_cinder_store import pool
from tests.functional import conftest as fx
from tests.functional import test_driver

MiB = 1024 * 1024


def pool_volumes(cinder, store_name='gold'):
    return {v.id: v for v in fx.all_volumes(cinder).values()
            if (v.metadata or {}).get(pool.POOL_MARK) == store_name and
            v.status != 'deleting'}


def wait_until(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.2)


def test_add_claims_a_pool_volume_and_close_deletes_the_pool(
        tmp_path, cinder):
    store = test_driver.make_store(tmp_path / 'state',
                                   cinder_plus_volume_pool_size=1)
    image_id = str(uuid.uuid4())
    loc = None
    try:
        wait_until(lambda: len(store._pool) == 1)
        (ready,) = pool_volumes(cinder)
        # attached read-write to this host ahead of time, by this process
        pooled = cinder.volumes.get(ready)
        assert pooled.status == 'in-use'
        record = store.attachments.records.load(ready)
        assert record.mode == 'rw' and record.state == holders.ATTACHED
        assert [a['attachment_id'] for a in pooled.attachments] == [
            record.attachment_id]
        data = os.urandom(MiB)
        url, size, _, _, _ = store.add(
            image_id, io.BytesIO(data), len(data), 'sha256',
            context=test_driver.Context('func-project'))
        loc = gs_location.get_location_from_uri_and_backend(
            url, 'gold', conf=store.conf)
        vol = fx.image_volume(cinder, image_id)
        assert vol.id == ready and url.endswith(vol.id)
        # written through the pool's attachment, then detached, read-only
        assert vol.status == 'available' and vol.attachments == []
        assert vol.name == 'image-%s' % image_id
        assert store.attachments.records.load(vol.id) is None
        # one update renamed it and replaced the pool's metadata
        assert {k: vol.metadata.get(k) for k in (
            'glance_image_id', 'image_size', 'image_owner', pool.POOL_MARK,
            holders.UPLOAD_MARK)} == {
            'glance_image_id': image_id, 'image_size': str(MiB),
            'image_owner': 'func-project', pool.POOL_MARK: None,
            holders.UPLOAD_MARK: None}
        chunks, _ = store.get(loc)
        assert b''.join(chunks) == data
        # refilled in the background
        wait_until(lambda: len(store._pool) == 1)
        (refill,) = pool_volumes(cinder)
        assert refill != vol.id
    finally:
        if loc is not None:
            store.delete(loc)
        store.close()
    wait_until(lambda: not pool_volumes(cinder))


KEEP_A_POOL = '''
import sys, time
sys.path.insert(0, %(repo)r)
from tests.functional import test_driver
store = test_driver.make_store(%(state)r, cinder_plus_volume_pool_size=1)
while len(store._pool) < 1:
    time.sleep(0.1)
print(store._pool._ready[0].volume.id, flush=True)
time.sleep(600)
'''


def test_the_pool_of_a_killed_process_is_deleted_when_the_pool_is_off(
        tmp_path, cinder):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    child = subprocess.Popen(
        [sys.executable, '-c', KEEP_A_POOL % {
            'repo': repo, 'state': str(tmp_path / 'child')}],
        stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        volume_id = child.stdout.readline().strip() if ready else None
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert volume_id in pool_volumes(cinder)
    # a store with the pool off (the default) heals what the child left
    store = test_driver.make_store(tmp_path / 'state')
    assert store._pool is None
    findings = heal.Healer(store).reconcile(store.volumes())
    assert [(f.action, f.outcome) for f in findings
            if f.volume_id == volume_id] == [('delete volume', 'deleted')]
    fx.wait_gone(cinder, volume_id)
