"""Two glance-api hosts on one Cinder: what one host may do to the other.

Host 1 is the cloud's glance-api (:9292, this machine's host name); host 2
is tools/aio's second glance-api (:9293, UTS namespace "aio-host2", its own
state dir and lock_path, same stores).  Cinder tells them apart by the
connector's host, and tools/cinder_loop gives each host its own loop device
on the volume, as a real backend gives each host its own path to the LUN.

Slow readers are HTTP downloads that stop reading after the first chunk:
the glance worker then blocks on the full socket and keeps its attachment
until the test lets the download go on.
"""

import hashlib
import importlib.util
import io
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time

from glance_store import exceptions
from glance_store import location as gs_location
from glanceclient import client as glance_client
import pytest
import requests

from tests.functional import conftest as fx
from tests.functional import test_driver
from tests.functional.test_images import pattern

MiB = 1024 * 1024
SIZE = 64 * MiB         # well above what the sockets buffer (~10 MiB)
HOST1 = socket.gethostname()
HOST2 = 'aio-host2'
PIDFILE2 = os.path.join(fx.AIO_ROOT, 'run', 'glance-api-2.pid')
BIN = os.path.join(fx.AIO_ROOT, 'venv', 'bin')
AIO = fx.common.AIO


def host2_url():
    return fx.common.aio_env(host=2)['OS_IMAGE_URL']


URL2 = host2_url()


def answers(url):
    try:
        requests.get(url, timeout=5)
        return True
    except requests.RequestException:
        return False


def restart_host2(driver=None):
    env = dict(os.environ)
    if driver:
        env['AIO_HOST2_DRIVER'] = driver
    subprocess.run([AIO, 'restart', 'glance-api-2'], check=True,
                   env=env, capture_output=True)


def host2_driver():
    path = os.path.join(fx.AIO_ROOT, 'run', 'glance-api-2.driver')
    with open(path) as f:
        return f.read().strip()


@pytest.fixture(scope='module', autouse=True)
def host2():
    """Host 2 runs, with our driver (started here if the cloud has none)."""
    if not answers(URL2) or host2_driver() != 'cinder_plus':
        restart_host2('cinder_plus')
    yield
    if host2_driver() != 'cinder_plus':
        restart_host2('cinder_plus')


@pytest.fixture(scope='module')
def g1(admin, glance_url):
    return glance_client.Client('2', endpoint=glance_url, session=admin)


@pytest.fixture(scope='module')
def g2(admin):
    return glance_client.Client('2', endpoint=URL2, session=admin)


@pytest.fixture
def image(g1, g2, cinder, images):
    """Upload SIZE bytes to a store through host 1: (image, volume, sha)."""
    def make(store='gold', seed=3, client=None):
        data = pattern(SIZE, seed)
        img = images()
        (client or g1).images.upload(img.id, io.BytesIO(data),
                                     image_size=len(data), backend=store)
        vol = fx.image_volume(cinder, img.id)
        ours = client is not g2 or host2_driver() == 'cinder_plus'
        if vol.multiattach and ours:
            # the tests say which host holds it: not the uploading host's
            # warm-up (cinder_plus_warm_after_upload)
            vol = fx.without_warm_up(cinder, vol.id)
        return img, vol, sha(data)
    return make


def sha(data):
    return hashlib.sha256(data).hexdigest()


class Download(threading.Thread):
    """An HTTP download that holds after its first chunk until released."""

    def __init__(self, url, token, image_id, hold=True):
        super().__init__(daemon=True)
        self.url = '%s/v2/images/%s/file' % (url, image_id)
        self.token = token
        self.go = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.go.set()
        self.status = self.digest = self.error = None
        self.t0 = self.t_first = self.t_end = None
        self.start()

    def run(self):
        self.t0 = time.time()
        digest = hashlib.sha256()
        try:
            with requests.get(self.url, stream=True, timeout=300,
                              headers={'X-Auth-Token': self.token}) as resp:
                self.status = resp.status_code
                if resp.status_code != 200:
                    self.error = resp.text[:1000]
                    return
                for n, chunk in enumerate(resp.iter_content(MiB)):
                    digest.update(chunk)
                    if n == 0:
                        self.t_first = time.time()
                        self.started.set()
                        self.go.wait(300)
            self.digest = digest.hexdigest()
        except Exception as e:      # the test asserts on it
            self.error = repr(e)
        finally:
            self.t_end = time.time()
            self.started.set()

    def finish(self):
        self.go.set()
        self.join(300)
        return self

    @property
    def seconds(self):
        return self.t_end - self.t0


def attachments(cinder, volume_id):
    return cinder.volumes.get(volume_id).attachments


def hosts_of(cinder, volume_id):
    return sorted(a.get('host_name') or '?'
                  for a in attachments(cinder, volume_id))


def wait_hosts(cinder, volume_id, wanted, timeout=60):
    return fx.wait_for(lambda: set(hosts_of(cinder, volume_id)) >= wanted,
                       timeout, interval=0.1,
                       what='%s attached on %s' % (volume_id, wanted))


def bound_loops(volume_id):
    """{device: backing file} of the loop devices on the volume's file."""
    return {device: backing for device, backing in
            fx.common.loop_devices().items() if volume_id in backing}


def device_of(cinder, attachment_id):
    info = cinder.attachments.show(attachment_id).connection_info
    return info['device_path']


def delete_and_check(glance, cinder, image_id, volume_id):
    """Delete through ``glance``: the volume and every host's device go.

    Idle (warm) attachments of either host are let go on the way.
    """
    t0 = time.time()
    glance.images.delete(image_id)
    fx.wait_gone(cinder, volume_id)
    assert not bound_loops(volume_id)
    return time.time() - t0


def host2_workers():
    with open(PIDFILE2) as f:
        master = f.read().strip()
    out = subprocess.run(['pgrep', '-P', master], capture_output=True,
                         text=True).stdout.split()
    return [int(p) for p in out
            if 'uwsgi' in open('/proc/%s/cmdline' % p).read()]


@pytest.fixture(scope='module')
def short_waits():
    """A config file that bounds the clean-up tool's waits on Cinder.

    The shared cloud may hold another test's volume stuck 'reserved'; the
    tool would wait cinder_state_transition_timeout (300 s) for it.
    """
    import configparser
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(fx.GLANCE_CONF)
    stores = [s.split(':')[0].strip() for s in
              conf.get('DEFAULT', 'enabled_backends').split(',')]
    fd, path = tempfile.mkstemp(prefix='gcs-multihost-', suffix='.conf')
    with os.fdopen(fd, 'w') as f:
        for store in stores:
            f.write('[%s]\ncinder_state_transition_timeout = 15\n' % store)
    os.chmod(path, 0o644)
    yield path
    os.unlink(path)


def cleanup_tool(host, extra_conf):
    """glance-cinder-store-cleanup as the glance user on host 1 or 2."""
    cmd = ['sudo', '-u', 'glance', os.path.join(BIN,
           'glance-cinder-store-cleanup'), '--config-file', fx.GLANCE_CONF,
           '--config-file', extra_conf]
    if host == 2:
        cmd = [AIO, 'host2'] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         cwd='/')
    # 1: something else in the shared cloud could not be cleaned (another
    # test's leftovers); what matters here is what it did to ours
    assert out.returncode in (0, 1), out.stdout + out.stderr
    return out.stdout


# -- readers on both hosts --------------------------------------------------

def test_both_hosts_read_a_multiattach_volume_each_on_its_own_device(
        image, admin, cinder, glance_url, g2):
    img, vol, digest = image('gold')
    token = admin.get_token()
    r1 = Download(glance_url, token, img.id)
    r2 = Download(URL2, token, img.id)
    try:
        wait_hosts(cinder, vol.id, {HOST1, HOST2})
        atts = {a['host_name']: a['attachment_id']
                for a in attachments(cinder, vol.id)}
        devices = {h: device_of(cinder, a) for h, a in atts.items()}
        loops = bound_loops(vol.id)
        print('\ndevices per host: %s' % devices)
        assert devices[HOST1] != devices[HOST2]
        assert loops[devices[HOST2]].endswith('/hosts/%s/%s' % (
            HOST2, 'volume-' + vol.id))
    finally:
        r1.finish(), r2.finish()
    for r in (r1, r2):
        assert (r.status, r.error, r.digest) == (200, None, digest)
    print('delete on host 2, both hosts\' idle attachments let go: %.1fs'
          % delete_and_check(g2, cinder, img.id, vol.id))


def test_second_host_waits_for_a_volume_without_multiattach(
        image, admin, cinder, glance_url, g1):
    """Store 'single' (type glance-single, no multiattach): one at a time.

    Host 2 waits (attachment_create retried for at least three of host 1's
    release checks) for host 1's reader, then reads.
    """
    img, vol, digest = image('single')
    token = admin.get_token()
    r1 = Download(glance_url, token, img.id)
    wait_hosts(cinder, vol.id, {HOST1})
    r2 = Download(URL2, token, img.id, hold=False)
    time.sleep(1.5)
    assert hosts_of(cinder, vol.id) == [HOST1]      # host 2 is waiting
    r1.finish()
    r2.join(120)
    assert (r1.status, r1.error, r1.digest) == (200, None, digest)
    assert (r2.status, r2.error, r2.digest) == (200, None, digest)
    print('\nnon-multiattach: host 2 got its first byte %.1fs after asking '
          '(host 1 let go after ~1.5 s + its next release check), whole '
          'download %.1fs' % (r2.t_first - r2.t0, r2.seconds))
    delete_and_check(g1, cinder, img.id, vol.id)


def test_second_host_gives_up_when_the_first_keeps_the_volume(
        image, admin, cinder, glance_url, g1):
    img, vol, digest = image('single')
    token = admin.get_token()
    r1 = Download(glance_url, token, img.id)
    try:
        wait_hosts(cinder, vol.id, {HOST1})
        r2 = Download(URL2, token, img.id, hold=False)
        r2.join(120)
        print('\nnon-multiattach, volume kept by host 1: host 2 gave up '
              'after %.1fs: status %s, error %s' % (r2.seconds, r2.status,
                                                    r2.error))
        # an error status before any byte, not a 200 and a short body
        assert r2.status == 503 and 'multiattach' in r2.error, r2.error
        assert hosts_of(cinder, vol.id) == [HOST1]
    finally:
        r1.finish()
    assert (r1.status, r1.error, r1.digest) == (200, None, digest)
    delete_and_check(g1, cinder, img.id, vol.id)


# -- upload and delete beside a reader on the other host --------------------

def test_upload_on_one_host_while_the_other_reads(image, admin, cinder, g1,
                                                  g2, images, glance_url):
    img, vol, digest = image('gold')
    token = admin.get_token()
    r1 = Download(glance_url, token, img.id)
    try:
        wait_hosts(cinder, vol.id, {HOST1})
        data = pattern(SIZE, 8)
        new = images()
        g2.images.upload(new.id, io.BytesIO(data), image_size=len(data),
                         backend='gold')
        assert g2.images.get(new.id).status == 'active'
        assert hosts_of(cinder, vol.id) == [HOST1]
    finally:
        r1.finish()
    assert (r1.status, r1.error, r1.digest) == (200, None, digest)
    body = b''.join(g2.images.data(new.id))
    assert sha(body) == sha(data)
    delete_and_check(g1, cinder, img.id, vol.id)
    delete_and_check(g1, cinder, new.id, fx.image_volume(cinder, new.id).id)


def test_delete_on_one_host_waits_for_a_reader_on_the_other(
        image, admin, cinder, g2, glance_url):
    img, vol, digest = image('gold')
    token = admin.get_token()
    r1 = Download(glance_url, token, img.id)
    wait_hosts(cinder, vol.id, {HOST1})
    done = {}

    def delete():
        t0 = time.time()
        try:
            g2.images.delete(img.id)
            done['result'] = 'deleted'
        except Exception as e:
            done['result'] = repr(e)
        done['seconds'] = time.time() - t0
    deleter = threading.Thread(target=delete)
    deleter.start()
    time.sleep(3)
    assert deleter.is_alive(), done             # waiting for host 1
    assert cinder.volumes.get(vol.id).status == 'in-use'
    r1.finish()
    deleter.join(120)
    print('\ndelete on host 2 waited %.1fs for host 1\'s reader' %
          done['seconds'])
    assert (r1.status, r1.error, r1.digest) == (200, None, digest)
    assert done['result'] == 'deleted'
    fx.wait_gone(cinder, vol.id)


def test_delete_gives_up_on_a_reader_of_the_other_host(image, admin,
                                                       cinder, tmp_path, g1):
    """Bounded by cinder_state_transition_timeout (Glance: 409)."""
    img, vol, digest = image('gold')
    r2 = Download(URL2, admin.get_token(), img.id)
    try:
        wait_hosts(cinder, vol.id, {HOST2})
        store = test_driver.make_store(tmp_path / 'state',
                                       cinder_state_transition_timeout=3)
        loc = gs_location.get_location_from_uri_and_backend(
            'cinder://gold/%s' % vol.id, 'gold', conf=store.conf)
        with pytest.raises(exceptions.InUseByStore,
                           match='still attached on %s' % HOST2):
            store.delete(loc, context=test_driver.Context('x'))
        assert hosts_of(cinder, vol.id) == [HOST2]   # not touched
    finally:
        r2.finish()
    assert (r2.status, r2.error, r2.digest) == (200, None, digest)
    delete_and_check(g1, cinder, img.id, vol.id)


# -- one host's crash, the other host's clean-up ----------------------------

class SlowUpload(threading.Thread):
    """A chunked upload (size unknown) that stalls after its first MiBs."""

    def __init__(self, url, token, image_id):
        super().__init__(daemon=True)
        self.url = '%s/v2/images/%s/file' % (url, image_id)
        self.token = token
        self.stop = threading.Event()
        self.status = self.error = None
        self.start()

    def body(self):
        for _ in range(4):
            yield b'u' * MiB
        self.stop.wait(120)

    def run(self):
        try:
            self.status = requests.put(self.url, data=self.body(), headers={
                'X-Auth-Token': self.token,
                'Content-Type': 'application/octet-stream'},
                timeout=120).status_code
        except Exception as e:
            self.error = repr(e)


def volume_named(cinder, name):
    vols = cinder.volumes.list(search_opts={'all_tenants': 1, 'name': name})
    return vols[0] if vols else None


def test_host_crash_leaves_the_other_host_unblocked_and_its_state_alone(
        image, admin, cinder, glance_url, images, g1, short_waits):
    img, vol, digest = image('gold')
    token = admin.get_token()
    reader = Download(URL2, token, img.id)
    up = images()
    upload = SlowUpload(URL2, token, up.id)
    try:
        wait_hosts(cinder, vol.id, {HOST2})
        up_vol = fx.wait_for(
            lambda: (lambda v: v if v and v.attachments else None)(
                volume_named(cinder, 'image-' + up.id)),
            60, what='upload on host 2 attached')
        # Host 1's clean-up leaves host 2's live read and upload alone.
        out = cleanup_tool(1, short_waits)
        assert vol.id not in out and up_vol.id not in out, out
        assert hosts_of(cinder, vol.id) == [HOST2]
        assert hosts_of(cinder, up_vol.id) == [HOST2]

        workers = host2_workers()
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        t_kill = time.time()
        # Host 1 is not blocked: it reads the image at once.
        t0 = time.time()
        r1 = Download(glance_url, token, img.id, hold=False)
        r1.join(120)
        print('\nhost 1 read during host 2\'s crash: %.1fs' % (
            time.time() - t0))
        assert (r1.status, r1.error, r1.digest) == (200, None, digest)
        # ... and its clean-up still leaves host 2's leftovers alone (host
        # 2's restarted workers may be healing them meanwhile).
        out = cleanup_tool(1, short_waits)
        assert vol.id not in out and up_vol.id not in out, out
    finally:
        reader.finish()
        upload.stop.set()
        upload.join(60)
    # Host 2 heals itself: with glance_cinder_store.heal its restarted
    # workers do it; without, its operator's clean-up tool does.
    healing = importlib.util.find_spec('glance_cinder_store.heal')
    if healing is None:
        out = cleanup_tool(2, short_waits)
        assert vol.id in out and up_vol.id in out, out

    def healed():        # host 1 keeps its own (idle) attachment
        return (HOST2 not in hosts_of(cinder, vol.id) and
                volume_named(cinder, 'image-' + up.id) is None)
    fx.wait_for(healed, 120, what='host 2 healed')
    print('host 2 healed %.1fs after the kill (%s)' % (
        time.time() - t_kill, 'self-healing' if healing else
        'glance-cinder-store-cleanup on host 2'))
    g1.images.delete(img.id)
    fx.wait_gone(cinder, vol.id)
    assert not bound_loops(vol.id)


def test_warm_attachment_of_a_killed_worker_never_blocks_a_delete(
        image, admin, cinder, g1):
    """Host 2 reads, keeps the volume warm, and its workers are killed.

    Nobody on host 2 keeps that idle attachment any more; host 2's
    self-healing answers host 1's request instead of leaving the delete to
    wait out the grace period (and give up after 300 s with 409).
    """
    img, vol, digest = image('gold')
    reader = Download(URL2, admin.get_token(), img.id, hold=False)
    reader.join(120)
    assert (reader.status, reader.error, reader.digest) == (200, None,
                                                            digest)
    assert hosts_of(cinder, vol.id) == [HOST2]     # idle, kept warm
    workers = host2_workers()
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    fx.wait_for(lambda: answers(URL2) and host2_workers(), 60,
                what='host 2 workers restarted')
    done = {}

    def delete():
        try:
            g1.images.delete(img.id)
            done['result'] = 'deleted'
        except Exception as e:
            done['result'] = repr(e)
    t0 = time.time()
    deleter = threading.Thread(target=delete, daemon=True)
    deleter.start()
    deleter.join(90)
    print('\ndelete on host 1 waited %.1fs for the killed worker\'s warm '
          'attachment on host 2' % (time.time() - t0))
    assert done.get('result') == 'deleted', done
    fx.wait_gone(cinder, vol.id)
    assert not bound_loops(vol.id)


def test_foreign_attachment_of_another_host_is_never_touched(
        image, admin, cinder, glance_url, g1, short_waits):
    img, vol, digest = image('gold')
    connector = {'host': 'compute-1', 'initiator': 'nova-like',
                 'mountpoint': '/dev/vdb', 'ip': '127.0.0.9',
                 'platform': 'x86_64', 'os_type': 'linux',
                 'multipath': False}
    nova = cinder.attachments.create(vol.id, connector, mode='ro')
    cinder.attachments.complete(nova['id'])
    try:
        device = nova['connection_info']['device_path']
        token = admin.get_token()
        readers = [Download(glance_url, token, img.id, hold=False),
                   Download(URL2, token, img.id, hold=False)]
        for r in readers:
            r.join(120)
            assert (r.status, r.error, r.digest) == (200, None, digest)
        for host in (1, 2):
            out = cleanup_tool(host, short_waits)
            assert nova['id'] not in out, out
        assert nova['id'] in [a['attachment_id']
                              for a in attachments(cinder, vol.id)]
        assert device in bound_loops(vol.id)
        with open(device, 'rb') as f:       # still usable by "nova"
            assert f.read(4096) == pattern(4096, 3)
    finally:
        cinder.attachments.delete(nova['id'])
    delete_and_check(g1, cinder, img.id, vol.id)


# -- rolling upgrade: the built-in driver on host 2, ours on host 1 ---------

def acl_of(path):
    return subprocess.run(['getfacl', '-cp', path], capture_output=True,
                          text=True).stdout


def test_rolling_upgrade_builtin_driver_beside_ours(image, admin, cinder,
                                                    glance_url, g1, g2,
                                                    images):
    restart_host2('cinder')
    ours, ours_vol, ours_sha = image('gold', seed=4)            # host 1
    theirs, theirs_vol, theirs_sha = image('gold', seed=6, client=g2)
    token = admin.get_token()
    hold = Download(glance_url, token, ours.id)
    try:
        wait_hosts(cinder, ours_vol.id, {HOST1})
        att = attachments(cinder, ours_vol.id)[0]['attachment_id']
        device = device_of(cinder, att)
        before = (os.stat(device).st_uid, acl_of(device))
        # host 2 (built-in) reads both while host 1 (ours) holds one
        for img_id, digest in ((ours.id, ours_sha), (theirs.id, theirs_sha)):
            r = Download(URL2, token, img_id, hold=False)
            r.join(120)
            assert (r.status, r.error, r.digest) == (200, None, digest)
        # host 1 reads the built-in driver's image
        r = Download(glance_url, token, theirs.id, hold=False)
        r.join(120)
        assert (r.status, r.error, r.digest) == (200, None, theirs_sha)
        # host 2's chown-and-back never touched host 1's device
        assert (os.stat(device).st_uid, acl_of(device)) == before
        assert before[0] == 0, before       # never chowned to glance
        assert hosts_of(cinder, ours_vol.id) == [HOST1]
    finally:
        hold.finish()
    assert (hold.status, hold.error, hold.digest) == (200, None, ours_sha)
    delete_and_check(g1, cinder, theirs.id, theirs_vol.id)   # ours deletes
    # Host 1 keeps 'ours' warm (idle attachment): the built-in driver cannot
    # ask it to let go, so its delete fails and leaves image and volume as
    # they were (operators: cinder_plus_attach_grace_period = 0 until the
    # last host is upgraded, or delete through an upgraded host).
    assert hosts_of(cinder, ours_vol.id) == [HOST1]
    with pytest.raises(Exception) as failed:
        g2.images.delete(ours.id)
    print('\nbuilt-in delete of a volume kept warm elsewhere: %r'
          % failed.value)
    assert g1.images.get(ours.id).status == 'active'
    assert cinder.volumes.get(ours_vol.id).status == 'in-use'
    delete_and_check(g1, cinder, ours.id, ours_vol.id)   # ours asks, waits


def test_hosts_have_their_own_identity():
    """What makes host 2 a host: its name, seen by the tools run there."""
    out = subprocess.run([AIO, 'host2', 'hostname'], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == HOST2 != HOST1
    status = subprocess.run([AIO, 'status'], capture_output=True,
                            text=True).stdout
    assert re.search(r'glance-api-2 .* ok .*%s' % HOST2, status), status
