"""Faults against the real cloud: what is left, what the user sees.

Each case checks three things: no image becomes ``active`` with wrong
bytes, nothing (volume, attachment, loop device) is left once the
self-healing has run, and the error names the cause.  Results and times to
heal are published in doc/source/reliability.rst.
"""

import hashlib
import io
import os
import signal
import subprocess
import threading
import time
import uuid

from glance_store import exceptions
from glance_store import location as gs_location
import pytest
import requests

from glance_cinder_store import heal
from glance_cinder_store import holders
from tests.functional import conftest as fx
from tests.functional import faultproxy
from tests.functional import test_driver
from tests.functional.test_images import pattern
from tests.functional import test_tools

MiB = 1024 * 1024
#: The goal: a killed worker's leftovers are gone within this, unaided.
HEAL_GOAL = 60
GLANCE_PID = os.path.join(fx.AIO_ROOT, 'run', 'glance-api.pid')


def glance_workers():
    """The uwsgi worker pids: children of the glance-api master."""
    with open(GLANCE_PID) as f:
        master = int(f.read())
    workers = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/stat' % pid) as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == master:
            workers.append(int(pid))
    assert workers, 'no glance-api workers under master %d' % master
    return workers


def kill_workers():
    workers = glance_workers()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    return workers


def wait_glance_back(glance_url):
    def answers():
        try:
            return requests.get(glance_url, timeout=5).status_code < 500
        except requests.RequestException:
            return False
    fx.wait_for(answers, timeout=60, what='glance-api answering again')


def leftovers(cinder, volume_id):
    """What is left of ``volume_id`` on this host and in Cinder."""
    left = []
    try:
        vol = cinder.volumes.get(volume_id)
        left.append('volume %s %s' % (vol.id, vol.status))
        left += ['attachment %s' % a['attachment_id']
                 for a in vol.attachments]
    except Exception:
        pass
    left += ['loop %s' % d for d in fx.loops_of(volume_id)]
    return left


def attachments_of(cinder, volume_id):
    try:
        return cinder.volumes.get(volume_id).attachments
    except Exception:
        return []


def time_to_heal(predicate, started):
    """Seconds until ``predicate`` holds (fails after twice the goal)."""
    fx.wait_for(predicate, timeout=2 * HEAL_GOAL, interval=1,
                what='self-healing')
    healed = time.time() - started
    print('\nhealed %.0fs after the kill (goal %ds)' % (healed, HEAL_GOAL))
    return healed


def test_workers_killed_mid_upload_heal_without_an_operator(
        admin, glance, cinder, images, glance_url):
    image = images()
    token = admin.get_token()
    block = pattern(4 * MiB, 7)
    stalled = threading.Event()

    def body():
        for _ in range(16):                 # 64 MiB, then hang
            yield block
        stalled.set()
        time.sleep(300)
        yield b''

    def put():
        try:
            requests.put('%s/v2/images/%s/file' % (glance_url, image.id),
                         data=body(), timeout=400, headers={
                             'X-Auth-Token': token,
                             'Content-Type': 'application/octet-stream',
                             'X-Image-Meta-Store': 'gold'})
        except requests.RequestException:
            pass                            # the worker died under us
    threading.Thread(target=put, daemon=True).start()
    vol = fx.wait_for(lambda: _volume_of(cinder, image.id), timeout=120,
                      what='the upload volume')
    fx.wait_for(lambda: attachments_of(cinder, vol.id) and stalled.is_set(),
                timeout=120, what='the upload under way')
    assert leftovers(cinder, vol.id)
    started = time.time()
    kill_workers()
    wait_glance_back(glance_url)
    time_to_heal(lambda: not leftovers(cinder, vol.id), started)
    # the image never became active with partial bytes
    assert glance.images.get(image.id).status in ('saving', 'queued')
    # the clean-up tool reports the image, and deletes it when told to
    out = test_tools.run('glance-cinder-store-cleanup', user='glance')
    assert 'image %s: left saving by a dead upload' % image.id in (
        out.stdout), out.stdout + out.stderr
    out = test_tools.run('glance-cinder-store-cleanup',
                         '--delete-saving-images', user='glance')
    assert 'image %s: left saving by a dead upload: deleted' % image.id in (
        out.stdout), out.stdout + out.stderr


def test_workers_killed_mid_download_heal_without_an_operator(
        admin, glance, cinder, images, glance_url):
    data = pattern(48 * MiB, 9)
    image = images()
    glance.images.upload(image.id, io.BytesIO(data), image_size=len(data),
                         backend='gold')
    vol = fx.image_volume(cinder, image.id)
    resp = requests.get('%s/v2/images/%s/file' % (glance_url, image.id),
                        headers={'X-Auth-Token': admin.get_token()},
                        stream=True, timeout=120)
    first = next(resp.iter_content(MiB))    # then stop reading
    assert first == data[:len(first)]
    fx.wait_for(lambda: attachments_of(cinder, vol.id), timeout=30,
                what='the download attached')
    started = time.time()
    kill_workers()
    resp.close()
    wait_glance_back(glance_url)
    time_to_heal(lambda: not attachments_of(cinder, vol.id) and not
                 fx.loops_of(vol.id), started)
    # and the image still reads back whole
    got = hashlib.sha256(b''.join(glance.images.data(image.id)))
    assert got.hexdigest() == hashlib.sha256(data).hexdigest()


def _volume_of(cinder, image_id):
    vols = cinder.volumes.list(search_opts={'all_tenants': 1,
                                            'name': 'image-%s' % image_id})
    return vols[0] if vols else None


# -- a fault proxy in front of cinder-api, at each call of add/get/delete ----

CINDER_API = ('127.0.0.1', 8776)
VOL = r'/volumes/[0-9a-f-]{36}'
ATT = r'/attachments/[0-9a-f-]{36}'


@pytest.fixture(scope='module')
def proxy():
    p = faultproxy.FaultProxy(*CINDER_API)
    yield p
    p.close()


@pytest.fixture
def faulty(proxy, tmp_path):
    """A driver-level store whose Cinder calls go through the proxy."""
    project = fx.session_for('glance').get_project_id()
    store = test_driver.make_store(
        tmp_path / 'state', cinder_http_retries=1,
        cinder_state_transition_timeout=30,
        cinder_plus_http_timeout=HTTP_TIMEOUT,
        cinder_endpoint_template='http://127.0.0.1:%d/v3/%s' % (
            proxy.port, project))
    proxy.clear()
    yield store
    proxy.clear()
    # what the self-healing pass does for the store's host state
    heal.Healer(store).reconcile(store.volumes())


#: The faulty store's cinder_plus_http_timeout; 'hang' outlasts it.
HTTP_TIMEOUT = 5
HANG = 'hang-after:%d' % (HTTP_TIMEOUT + 3)

ADD_FAULTS = [
    # (method, path, action, times, error expected or None)
    ('POST', r'/volumes$', 'after-503', 1, None),
    ('POST', r'/volumes$', 'reset', 1, None),
    ('POST', r'/volumes$', HANG, 1, None),
    ('POST', r'/attachments$', HANG, 1, None),
    ('POST', ATT + '/action$', HANG, 1, None),
    ('POST', r'/attachments$', 'after-500', 1, None),
    ('POST', r'/attachments$', 'reset', 1, None),
    ('POST', r'/attachments$', '500', 9, 'reserving'),
    # the device was connected: the bytes are good without the "complete"
    ('POST', ATT + '/action$', '503', 9, None),
    ('PUT', VOL + '/metadata$', '500', 9, 'metadata'),
    ('DELETE', ATT + '$', '500', 9, 'attachment'),
    ('POST', VOL + '/action$', '500', 9, 'read-only'),
]


@pytest.mark.parametrize('method,path,action,times,error', ADD_FAULTS,
                         ids=['%s %s %s' % f[:3] for f in ADD_FAULTS])
def test_cinder_fault_during_add(faulty, proxy, cinder, method, path,
                                 action, times, error):
    data = pattern(6 * MiB, 11)
    image_id = str(uuid.uuid4())
    rule = proxy.inject(method, path, action, times)
    ctx = test_driver.Context('faults')
    if error is None:
        url, size, md5, sha, _ = faulty.add(image_id, io.BytesIO(data),
                                            len(data), 'sha256', context=ctx)
        assert rule.hits >= 1
        assert sha == hashlib.sha256(data).hexdigest()
        proxy.clear()
        vols = test_driver.volumes_named(cinder, 'image-' + image_id)
        assert len(vols) == 1, 'exactly one volume per upload'
        loc = gs_location.get_location_from_uri_and_backend(
            url, 'gold', conf=faulty.conf)
        assert b''.join(faulty.get(loc, context=ctx)[0]) == data
        # a detach that failed is finished by the healing pass
        heal.Healer(faulty).reconcile(faulty.volumes())
        faulty.delete(loc, context=ctx)
    else:
        with pytest.raises(Exception, match=error):
            faulty.add(image_id, io.BytesIO(data), len(data), 'sha256',
                       context=ctx)
        assert rule.hits >= 1
        proxy.clear()
    fx.wait_for(lambda: _settled(cinder, 'image-' + image_id, faulty),
                timeout=60, what='nothing left of the upload')


def _settled(cinder, name, store):
    heal.Healer(store).reconcile(store.volumes())
    return not test_driver.volumes_named(cinder, name)


@pytest.fixture(scope='module')
def stored(glance, cinder):
    """One image on gold, for the get and delete cases."""
    data = pattern(6 * MiB, 12)
    image = glance.images.create(name='gcs-func-faults', disk_format='raw',
                                 container_format='bare')
    glance.images.upload(image.id, io.BytesIO(data), image_size=len(data),
                         backend='gold')
    # the cases count the volume's attachments: not glance-api's warm one
    fx.without_warm_up(cinder, fx.image_volume(cinder, image.id).id)
    yield image, data
    glance.images.delete(image.id)


GET_FAULTS = [
    ('POST', r'/attachments$', 'reset', 1, None),
    ('POST', r'/attachments$', 'after-503', 1, None),
    ('DELETE', ATT + '$', '500', 9, None),
    ('GET', VOL + '$', '500', 9, 'volume'),
    ('GET', VOL + '$', HANG, 1, None),
    ('POST', r'/attachments$', '503', 9, 'reserving'),
]


@pytest.mark.parametrize('method,path,action,times,error', GET_FAULTS,
                         ids=['%s %s %s' % f[:3] for f in GET_FAULTS])
def test_cinder_fault_during_get(faulty, proxy, cinder, stored, method,
                                 path, action, times, error):
    image, data = stored
    vol = fx.image_volume(cinder, image.id)
    loc = gs_location.get_location_from_uri_and_backend(
        'cinder://gold/%s' % vol.id, 'gold', conf=faulty.conf)
    rule = proxy.inject(method, path, action, times)
    ctx = test_driver.Context('faults')
    if error is None:
        assert b''.join(faulty.get(loc, context=ctx)[0]) == data
    else:
        with pytest.raises(Exception, match=error):
            b''.join(faulty.get(loc, context=ctx)[0])
    assert rule.hits >= 1
    proxy.clear()
    heal.Healer(faulty).reconcile(faulty.volumes())
    assert not cinder.volumes.get(vol.id).attachments
    assert not faulty.attachments.records.volume_ids()
    assert not fx.loops_of(vol.id)


@pytest.mark.parametrize('action,error', [('after-503', None),
                                          ('500', 'refused to delete')])
def test_cinder_fault_during_delete(faulty, proxy, cinder, action, error):
    data = pattern(2 * MiB, 13)
    image_id = str(uuid.uuid4())
    ctx = test_driver.Context('faults')
    url = faulty.add(image_id, io.BytesIO(data), len(data), 'sha256',
                     context=ctx)[0]
    loc = gs_location.get_location_from_uri_and_backend(
        url, 'gold', conf=faulty.conf)
    proxy.inject('DELETE', VOL + '$', action, 9)
    if error is None:
        faulty.delete(loc, context=ctx)
    else:
        with pytest.raises(exceptions.InUseByStore, match=error):
            faulty.delete(loc, context=ctx)
        proxy.clear()
        faulty.delete(loc, context=ctx)        # and a retry works
    proxy.clear()
    fx.wait_for(lambda: not test_driver.volumes_named(
        cinder, 'image-' + image_id), timeout=60, what='volume deleted')


# -- host-side faults --------------------------------------------------------

def test_simulated_reboot_makes_earlier_records_stale(tmp_path, cinder,
                                                      stored, monkeypatch):
    image, data = stored
    vol = fx.image_volume(cinder, image.id)
    monkeypatch.setenv(holders.BOOT_ID_ENV, 'boot-before')
    store = test_driver.make_store(tmp_path / 'state',
                                   cinder_plus_attach_grace_period=600)
    loc = gs_location.get_location_from_uri_and_backend(
        'cinder://gold/%s' % vol.id, 'gold', conf=store.conf)
    ctx = test_driver.Context('faults')
    reading = store.get(loc, context=ctx)[0]
    try:
        first = next(reading)
        assert first == data[:len(first)]
        # held by a live reader of this boot: kept (its "complete" may
        # still be on the way, so the attachment list, not the volume)
        assert not [f for f in heal.Healer(store).reconcile(store.volumes())
                    if f.volume_id == vol.id]
        assert fx.cinder_attachments(cinder, vol.id)
        started = time.time()
        monkeypatch.setenv(holders.BOOT_ID_ENV, 'boot-after')
        findings = heal.Healer(store).reconcile(store.volumes())
        assert [(f.volume_id, f.outcome) for f in findings
                if f.volume_id == vol.id] == [(vol.id, 'detached')]
        print('\nreboot: healed in %.1fs' % (time.time() - started))
    finally:
        reading.close()     # the "previous boot's" reader goes away
    assert not fx.cinder_attachments(cinder, vol.id)
    assert not fx.loops_of(vol.id)


def test_unusable_state_dir_is_a_clear_error(cinder):
    store = test_driver.make_store('/proc/gcs-no-such-dir')
    image_id = str(uuid.uuid4())
    with pytest.raises(exceptions.BadStoreConfiguration,
                       match='cinder_plus_state_dir'):
        store.add(image_id, io.BytesIO(b'x' * MiB), MiB, 'sha256',
                  context=test_driver.Context('faults'))
    fx.wait_for(lambda: not test_driver.volumes_named(
        cinder, 'image-' + image_id), timeout=60, what='volume deleted')


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs for a state folder, filled up by ``fill()``."""
    mnt = tmp_path / 'small'
    mnt.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k',
                              'tmpfs', str(mnt)], capture_output=True)
    if mounted.returncode:
        pytest.skip('cannot mount a tmpfs: %s' % mounted.stderr.decode())
    filler = mnt / 'filler'

    def fill():
        with open(filler, 'wb', buffering=0) as f:
            try:
                while True:
                    f.write(bytes(4096))
            except OSError:
                pass
    try:
        yield mnt, fill, filler.unlink
    finally:
        subprocess.run(['umount', str(mnt)], check=True)


def test_full_state_disk_is_a_clear_error_and_attaches_nothing(
        small_disk, cinder, stored):
    """The state folder's disk fills up after start-up, then frees up."""
    mnt, fill, free = small_disk
    image, data = stored
    vol = fx.image_volume(cinder, image.id)
    store = test_driver.make_store(mnt / 'state')
    loc = gs_location.get_location_from_uri_and_backend(
        'cinder://gold/%s' % vol.id, 'gold', conf=store.conf)
    ctx = test_driver.Context('faults')
    fill()
    with pytest.raises(exceptions.BackendException,
                       match='cinder_plus_state_dir .*No space left'):
        b''.join(store.get(loc, context=ctx)[0])
    assert not fx.cinder_attachments(cinder, vol.id)
    assert not fx.loops_of(vol.id)
    image_id = str(uuid.uuid4())
    with pytest.raises(exceptions.BackendException, match='No space left'):
        store.add(image_id, io.BytesIO(b'x' * MiB), MiB, 'sha256',
                  context=ctx)
    fx.wait_for(lambda: not test_driver.volumes_named(
        cinder, 'image-' + image_id), timeout=60, what='volume deleted')
    free()
    assert b''.join(store.get(loc, context=ctx)[0]) == data
    assert not fx.cinder_attachments(cinder, vol.id)
    assert not os.listdir(mnt / 'state' / 'attachments')


def test_backend_full_is_a_clear_error(tmp_path, cinder):
    project = fx.session_for('glance').get_project_id()
    quota = cinder.quotas.get(project)
    used = cinder.quotas.get(project, usage=True).gigabytes['in_use']
    cinder.quotas.update(project, gigabytes=used)
    try:
        store = test_driver.make_store(tmp_path / 'state')
        image_id = str(uuid.uuid4())
        with pytest.raises(exceptions.StorageFull, match='quota'):
            store.add(image_id, io.BytesIO(b'x' * MiB), MiB, 'sha256',
                      context=test_driver.Context('faults'))
        assert not test_driver.volumes_named(cinder, 'image-' + image_id)
    finally:
        cinder.quotas.update(project, gigabytes=quota.gigabytes)


# -- cloud services failing under an upload --------------------------------

def aio(*args):
    out = subprocess.run([fx.AIO] + list(args), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def kill_service(name):
    with open(os.path.join(fx.AIO_ROOT, 'run', name + '.pid')) as f:
        os.kill(int(f.read()), signal.SIGKILL)


class SlowStream:
    """Upload data that calls ``halfway`` once, half-way through."""

    def __init__(self, data, halfway):
        self.data = io.BytesIO(data)
        self.size = len(data)
        self.halfway = halfway

    def read(self, n=-1):
        if self.halfway and self.data.tell() >= self.size // 2:
            self.halfway, halfway = None, self.halfway
            halfway()
        return self.data.read(min(n, MiB) if n and n > 0 else MiB)


class Outage:
    """One service made to fail once, then brought back in the background.

    ``cinder-volume`` and ``keystone`` are killed and restarted ``down``
    seconds later; ``rabbitmq`` is restarted (stopped and started: it is
    down while its node boots).
    """

    def __init__(self, service, down):
        self.service = service
        self.down = down
        self.back = threading.Event()
        self.error = None
        self.started = False

    def __call__(self):
        if self.started:
            return
        self.started = True
        if self.service != 'rabbitmq':
            kill_service(self.service)
        threading.Thread(target=self._restore, daemon=True).start()

    def _restore(self):
        try:
            time.sleep(self.down)
            aio('restart', self.service)
        except BaseException as e:      # reported by wait()
            self.error = e
        finally:
            self.back.set()

    def wait(self):
        if self.started:
            assert self.back.wait(360), '%s never came back' % self.service
            assert self.error is None, self.error


#: (service, step of the image's life, seconds down)
OUTAGES = [
    ('cinder-volume', 'attach', 10),
    ('cinder-volume', 'write', 10),
    ('cinder-volume', 'detach', 10),
    ('cinder-volume', 'delete', 10),
    ('rabbitmq', 'write', 0),
    ('rabbitmq', 'attach', 0),
    ('keystone', 'write', 30),
]
STEP_CALLS = {'attach': ('POST', r'/attachments$'),
              'detach': ('DELETE', ATT + '$'),
              'delete': ('DELETE', VOL + '$')}


@pytest.mark.parametrize('service,step,down', OUTAGES,
                         ids=['%s-during-%s' % o[:2] for o in OUTAGES])
def test_service_outage(faulty, proxy, cinder, service, step, down):
    """Add, read back and delete an image while a service fails once."""
    data = pattern(32 * MiB, 14)
    image_id = str(uuid.uuid4())
    ctx = test_driver.Context('faults')
    outage = Outage(service, down)
    if step in STEP_CALLS:
        proxy.inject(*STEP_CALLS[step], action=outage)
    stream = SlowStream(data, outage if step == 'write' else None)
    try:
        url, size, _, sha, _ = faulty.add(image_id, stream, len(data),
                                          'sha256', context=ctx)
        assert sha == hashlib.sha256(data).hexdigest()
        loc = gs_location.get_location_from_uri_and_backend(
            url, 'gold', conf=faulty.conf)
        outage.wait()
        assert b''.join(faulty.get(loc, context=ctx)[0]) == data
        faulty.delete(loc, context=ctx)
        outage.wait()
    except Exception as e:
        # a failure must say what failed, and leave nothing behind
        assert 'Cinder' in str(e) or 'Keystone' in str(e), e
        print('\n%s during %s: %s' % (service, step, e))
    finally:
        proxy.clear()
        outage.wait()
    fx.wait_for(lambda: _settled(cinder, 'image-' + image_id, faulty),
                timeout=180, what='nothing left of the image')
