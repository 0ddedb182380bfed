"""Through glance-api: python-glanceclient in this one process, admin user.

Per store (ours ``gold``, the built-in driver's ``builtin``, Glance's
``files``): upload of a big image with its size declared
(``x-openstack-image-size``), its download (rate and time to first byte),
1 MiB upload/download latency, 8 concurrent uploads (threads) and 16
concurrent downloads (threads) of one image.  Downloads skip glanceclient's
checksum pass (``do_checksum=False``) so the client's hashing does not
compete with glance-api for the two cores; sizes are checked.
"""

import os
import subprocess
import threading
import time
import uuid

from aio_lib import common as aio_common
from aio_lib import names
from bench_lib import common
from bench_lib.common import log
from bench_lib.common import MiB

STORES = (names.GOLD, names.BUILTIN, names.FILES)
NAME_PREFIX = 'gcs-bench-'


def admin_auth():
    """Admin credentials, from ``tools/aio env admin`` (or OS_* variables)."""
    return aio_common.session('admin').auth


class Api:
    def __init__(self):
        from keystoneauth1 import session as ks_session
        self.auth = admin_auth()
        self.session = ks_session.Session(auth=self.auth)
        self.glance = self.client()
        from cinderclient import client as cinder_client
        self.cinder = cinder_client.Client('3.54', session=self.session)
        self.made = set()
        self._lock = threading.Lock()
        self._token = common.on_cleanup('images made through the API',
                                        self.delete_all)
        stale = [i.id for i in self.glance.images.list()
                 if (i.get('name') or '').startswith(NAME_PREFIX)]
        if stale:
            log('deleting %d image(s) an earlier run left' % len(stale))
            self.delete(stale)

    @staticmethod
    def cinder_only():
        from cinderclient import client as cinder_client
        from keystoneauth1 import session as ks_session
        return cinder_client.Client('3.54', session=ks_session.Session(
            auth=admin_auth()))

    def client(self):
        """A glanceclient with its own HTTP session (one per thread)."""
        from glanceclient import client as glance_client
        from keystoneauth1 import session as ks_session
        return glance_client.Client('2', session=ks_session.Session(
            auth=self.auth))

    def create(self, glance=None):
        image = (glance or self.glance).images.create(
            name=NAME_PREFIX + uuid.uuid4().hex[:12], disk_format='raw',
            container_format='bare')
        with self._lock:
            self.made.add(image.id)
        return image.id

    def upload(self, image_id, size, store, glance=None, zero_fraction=0.0):
        """Seconds for the PUT of the image data."""
        glance = glance or self.glance
        t = time.monotonic()
        glance.images.upload(image_id, common.DataSource(size, zero_fraction),
                             image_size=size, backend=store)
        dt = time.monotonic() - t
        image = glance.images.get(image_id)
        if image.status != 'active' or image.size != size:
            raise AssertionError('image %s is %s with %s bytes after upload'
                                 % (image_id, image.status, image.size))
        return dt

    def download(self, image_id, size, glance=None):
        """(seconds to first byte, seconds to last byte)."""
        glance = glance or self.glance
        t = time.monotonic()
        body = glance.images.data(image_id, do_checksum=False)
        first = None
        n = 0
        for chunk in body:
            if first is None:
                first = time.monotonic() - t
            n += len(chunk)
        dt = time.monotonic() - t
        if n != size:
            raise AssertionError('downloaded %d bytes of %d' % (n, size))
        return first, dt

    def delete(self, image_ids):
        """Delete images and wait until Cinder has deleted their volumes."""
        for image_id in image_ids:
            try:
                self.glance.images.delete(image_id)
            except Exception as e:
                log('could not delete image %s: %s' % (image_id, e))
            with self._lock:
                self.made.discard(image_id)
        self.wait_volumes_gone(image_ids)

    def wait_volumes_gone(self, image_ids, timeout=300):
        names = {'image-%s' % i for i in image_ids}

        def left():
            return [v for v in self.cinder.volumes.list(
                search_opts={'all_tenants': 1}) if v.name in names]
        try:
            aio_common.wait_for(lambda: not left(), timeout,
                                what='image volumes deleted')
            return
        except aio_common.TimedOut:
            vols = left()
        log('volumes still there after %d s: %s'
            % (timeout, [v.id for v in vols]))

    def delete_all(self):
        with self._lock:
            left = list(self.made)
        if left:
            self.delete(left)


BENCH_OWNER = 'gcs-bench'     # the project id of the driver level's context


def sweep_leftovers(cinder, image_ids=(), timeout=300):
    """Delete volumes this tool made and left (a crash, a cloud restart).

    Ours are those named ``image-<id>`` for a journaled id, and those whose
    ``image_owner`` metadata is the driver level's made-up project.  Retries
    while Cinder is unreachable (it may be restarting), up to ``timeout``.
    """
    from cinderclient import exceptions as cexc
    from keystoneauth1 import exceptions as ks_exc
    import tenacity
    names = {'image-%s' % i for i in image_ids}

    def sweep():
        for vol in cinder.volumes.list(search_opts={'all_tenants': 1}):
            if not (vol.name in names or (vol.metadata or {}).get(
                    'image_owner') == BENCH_OWNER):
                continue
            if vol.status == 'deleting':
                continue
            log('deleting volume %s (%s) left behind' % (vol.id, vol.status))
            for att in vol.attachments:
                cinder.attachments.delete(att['attachment_id'])
            try:
                cinder.volumes.delete(vol.id)
            except cexc.BadRequest:
                cinder.volumes.reset_state(vol.id, 'available')
                cinder.volumes.delete(vol.id)

    unreachable = (ks_exc.ConnectFailure, ks_exc.ConnectTimeout,
                   cexc.ClientException)
    try:
        tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(unreachable),
            wait=tenacity.wait_fixed(5),
            stop=tenacity.stop_after_delay(timeout),
            before_sleep=lambda state: log(
                'Cinder unreachable while cleaning up (%s); retrying'
                % type(state.outcome.exception()).__name__),
            reraise=True)(sweep)
    except unreachable as e:
        log('could not clean up volumes: %s' % e)


#: the processes whose CPU time the benchmark accounts for, by service
SERVICES = {
    'glance': lambda cmd: b'uwsgi' in cmd and b'glance' in cmd,
    'cinder': lambda cmd: b'/cinder-' in cmd,   # api, scheduler, volume
    # what Cinder's calls also cost: its database and its message queue
    'db_queue': lambda cmd: b'mariadbd' in cmd or b'beam.smp' in cmd,
}


def services_cpu_s():
    """CPU seconds used so far by the processes of each of ``SERVICES``."""
    total = dict.fromkeys(SERVICES, 0)
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmd = f.read()
            service = next((name for name, match in SERVICES.items()
                            if match(cmd)), None)
            if service is None:
                continue
            with open('/proc/%s/stat' % pid, 'rb') as f:
                fields = f.read().rsplit(b')', 1)[1].split()
        except OSError:
            continue
        total[service] += int(fields[11]) + int(fields[12])  # utime + stime
    hz = os.sysconf('SC_CLK_TCK')
    return {name: ticks / hz for name, ticks in total.items()}


def glance_api_cpu_s():
    """CPU seconds used so far by glance-api's uwsgi processes."""
    return services_cpu_s()['glance']


def settle(window=1.5, quiet_cpu_s=0.05, timeout=60):
    """Wait until glance-api has been nearly idle for a window; seconds."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        cpu = glance_api_cpu_s()
        time.sleep(window)
        if glance_api_cpu_s() - cpu <= quiet_cpu_s:
            break
    return time.monotonic() - t


def _timed_download(api, image_id, size):
    """(first byte s, seconds, glance-api CPU s per GiB) of a download."""
    cpu = glance_api_cpu_s()
    first, dt = api.download(image_id, size)
    used = glance_api_cpu_s() - cpu
    return first, dt, used * (1 << 30) / size


def _parallel(fns):
    """Run callables in threads started together; (wall s, results)."""
    results = [None] * len(fns)
    errors = []
    barrier = threading.Barrier(len(fns) + 1)

    def run(i, fn):
        try:
            barrier.wait()
            results[i] = fn()
        except BaseException as e:
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i, fn))
               for i, fn in enumerate(fns)]
    for th in threads:
        th.start()
    barrier.wait()
    t = time.monotonic()
    for th in threads:
        th.join()
    dt = time.monotonic() - t
    if errors:
        raise errors[0]
    return dt, results


WARM_READS = 3      # reads of each image, "again", per repeat
POOLED = names.GOLD + '_pool'    # figures of gold with its volume pool on
POOL_SIZE = 4       # cinder_plus_volume_pool_size: 8 uploads on 2 workers
POOL_OPTION = 'cinder_plus_volume_pool_size'
WARM_UP_OPTION = 'cinder_plus_warm_after_upload'


def _aio(*args):
    subprocess.run([os.path.join(common.REPO, 'tools', 'aio')] + list(args),
                   check=True, stdout=subprocess.DEVNULL)


def _pool_volumes(api):
    return [v for v in api.cinder.volumes.list(
        search_opts={'all_tenants': 1})
        if (v.metadata or {}).get('glance_cinder_store_pool') == names.GOLD
        and v.status == 'in-use']


def _wait_for_pools(api, workers):
    try:
        aio_common.wait_for(
            lambda: len(_pool_volumes(api)) >= workers * POOL_SIZE, 120,
            what='volume pools of glance-api attached')
    except aio_common.TimedOut:
        log('http gold pool: not every pool filled; measuring anyway')


def with_pool(api, cfg):
    """Uploads to gold with a volume pool in every glance-api worker.

    1 MiB upload latency, then the concurrent uploads.  Turns the pool on
    in glance-api.conf (``tools/aio set-store-option``), waits until every
    worker's pool is attached and ready, measures, and turns it off again:
    the pool is optional and off by default, and the functional tests
    expect a cloud without one.
    """
    workers = int(os.environ.get('AIO_GLANCE_WORKERS', '2'))
    out = {}
    # and, in the same restart of glance-api, no warm-up after uploads:
    # the first download of a new image is then uncached, as it is for an
    # image read long after its upload
    _aio('set-store-option', names.GOLD, WARM_UP_OPTION, '0')
    _aio('set-store-option', names.GOLD, POOL_OPTION, str(POOL_SIZE))
    ids = []
    try:
        _wait_for_pools(api, workers)
        big = cfg['http_big']
        ids.append(api.create())
        api.upload(ids[-1], big, names.GOLD)
        settle()
        os.sync()
        first, dt, cpu = _timed_download(api, ids[-1], big)
        out['download_uncached_mbps'] = common.rate(big, dt)
        out['first_byte_uncached_s'] = first
        out['download_uncached_cpu_s_per_gib'] = cpu
        log('http %-8s uncached first download %d MiB: %.0f MB/s, first '
            'byte %.3f s' % (POOLED, big // MiB,
                             out['download_uncached_mbps'], first))
        ups = []
        for _ in range(cfg.get('small_count', 5)):
            image_id = api.create()
            ids.append(image_id)
            ups.append(api.upload(image_id, MiB, names.GOLD))
            time.sleep(0.5)     # the claimed volume's replacement
        out['small_upload_s'] = ups
        _wait_for_pools(api, workers)
        n_up, conc = cfg['conc_uploads'], cfg['conc_size']
        clients = [api.client() for _ in range(n_up)]
        batch = [api.create() for _ in range(n_up)]
        ids += batch
        wall, each = _parallel([
            (lambda i=i: api.upload(batch[i], conc, names.GOLD, clients[i]))
            for i in range(n_up)])
        out['conc_upload_wall_s'] = wall
        out['conc_upload_mbps'] = common.rate(n_up * conc, wall)
        out['conc_upload_each_s'] = each
    finally:
        try:
            api.delete(ids)
        finally:
            _aio('set-store-option', names.GOLD, WARM_UP_OPTION)
            _aio('set-store-option', names.GOLD, POOL_OPTION)
    log('http %-8s 1 MiB upload %.3f s (median); %d x %d MiB uploads: '
        '%.0f MB/s total; volume pool of %d'
        % (POOLED, common.median(out['small_upload_s']),
           cfg['conc_uploads'], cfg['conc_size'] // MiB,
           out.get('conc_upload_mbps') or 0, POOL_SIZE))
    return out


def run_repeat(api, cfg, stores=STORES):
    """One repeat of every HTTP scenario for every store; figures per store."""
    big, conc, small = cfg['http_big'], cfg['conc_size'], MiB
    out = {s: {} for s in stores}

    # big upload, then download of the same image (interleaved by store)
    images = {}
    try:
        for s in stores:
            images[s] = api.create()
            dt = api.upload(images[s], big, s)
            out[s]['upload_s'] = dt
            out[s]['upload_mbps'] = common.rate(big, dt)
            log('http %-8s upload %d MiB: %.0f MB/s'
                % (s, big // MiB, out[s]['upload_mbps']))
            # ours warms the new image up in the background: let that
            # finish before the next store's upload is timed beside it
            out[s]['settle_s'] = settle()
        for s in stores:
            # the first read after the upload (ours: cold, nothing cached);
            # flush the uploads' dirty pages first, or the file store's
            # writeback competes with this read for the disk
            os.sync()
            first, dt, cpu = _timed_download(api, images[s], big)
            out[s]['download_s'] = dt
            out[s]['download_mbps'] = common.rate(big, dt)
            out[s]['first_byte_s'] = first
            out[s]['download_cpu_s_per_gib'] = cpu
            log('http %-8s download %d MiB: %.0f MB/s, first byte %.3f s, '
                'glance-api CPU %.2f s/GiB'
                % (s, big // MiB, out[s]['download_mbps'], first, cpu))
        # again: an image read within the last minute (warm).  A single
        # 1 GiB read varies by +-10% here, as much as the gap judged, so
        # each store is read WARM_READS times, the stores interleaved (a
        # drift of the machine hits all alike), and the medians kept.
        warm = {s: [] for s in stores}
        for _ in range(cfg.get('warm_reads', WARM_READS)):
            for s in stores:
                warm[s].append(_timed_download(api, images[s], big))
        for s in stores:
            first, dt, cpu = (common.median(list(v)) for v in zip(*warm[s]))
            out[s]['download_warm_s'] = dt
            out[s]['download_warm_mbps'] = common.rate(big, dt)
            out[s]['first_byte_warm_s'] = first
            out[s]['download_warm_cpu_s_per_gib'] = cpu
            log('http %-8s warm download: %.0f MB/s, first byte %.3f s, '
                'glance-api CPU %.2f s/GiB'
                % (s, out[s]['download_warm_mbps'], first, cpu))
    finally:
        api.delete(list(images.values()))

    # 1 MiB images: upload and download latency
    for s in stores:
        ids = []
        ups, downs, firsts = [], [], []
        try:
            for _ in range(cfg.get('small_count', 5)):
                image_id = api.create()
                ids.append(image_id)
                ups.append(api.upload(image_id, small, s))
                first, dt = api.download(image_id, small)
                downs.append(dt)
                firsts.append(first)
        finally:
            api.delete(ids)
        out[s]['small_upload_s'] = ups
        out[s]['small_download_s'] = downs
        out[s]['small_first_byte_s'] = firsts
        log('http %-8s 1 MiB upload %.3f s, download %.3f s (medians)'
            % (s, common.median(ups), common.median(downs)))

    # 8 concurrent uploads, then 16 concurrent downloads of one of them
    for s in stores:
        n_up, n_down = cfg['conc_uploads'], cfg['conc_downloads']
        clients = [api.client() for _ in range(max(n_up, n_down))]
        ids = [api.create() for _ in range(n_up)]
        try:
            cpu = services_cpu_s()
            wall, each = _parallel([
                (lambda i=i: api.upload(ids[i], conc, s, clients[i]))
                for i in range(n_up)])
            used = services_cpu_s()
            out[s]['conc_upload_wall_s'] = wall
            out[s]['conc_upload_mbps'] = common.rate(n_up * conc, wall)
            out[s]['conc_upload_each_s'] = each
            # on an all-in-one host Cinder's CPU is the uploads' too
            for name in SERVICES:
                out[s]['conc_upload_%s_cpu_s' % name] = (
                    used[name] - cpu[name]) / n_up

            def burst():
                return _parallel([
                    (lambda i=i: api.download(ids[0], conc, clients[i]))
                    for i in range(n_down)])
            wall, each = burst()
            out[s]['conc_download_wall_s'] = wall
            out[s]['conc_download_mbps'] = common.rate(n_down * conc, wall)
            out[s]['conc_download_first_byte_s'] = [e[0] for e in each]
            # the same burst again: an image many read a moment ago
            wall, _ = burst()
            out[s]['conc_download_again_mbps'] = common.rate(n_down * conc,
                                                             wall)
            log('http %-8s %d x %d MiB uploads: %.0f MB/s total; %d '
                'downloads: %.0f MB/s total, again %.0f MB/s'
                % (s, n_up, conc // MiB, out[s]['conc_upload_mbps'],
                   n_down, out[s]['conc_download_mbps'],
                   out[s]['conc_download_again_mbps']))
        finally:
            api.delete(ids)

    # uploads again, with ours' optional volume pool on
    out[POOLED] = with_pool(api, cfg)
    return out
