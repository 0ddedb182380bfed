"""Driver level: Store.add / Store.get in-process, no HTTP.

Runs in a child process per (driver, repeat), started by tools/bench with
``--driver-child``: a fresh process gives a clean ``ru_maxrss`` for the
peak-memory figure, and keeps the built-in driver's module-level state
(its keystone session, os-brick set-up) apart from ours.

Both stores are configured from glance-api.conf (backend ``gold`` for
ours, ``builtin`` for glance_store's ``cinder`` driver), use the glance
service user's credentials from there, and the same Cinder.  Ours gets a
private ``cinder_plus_state_dir``.  Every volume made is deleted after its
scenario, and its image id is journaled first so the parent can delete a
volume a crashed child left behind.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid

from aio_lib import common as aio_common
from aio_lib import names
from bench_lib import common
from bench_lib.common import log
from bench_lib.common import MiB


class Context:
    """The request context the built-in driver wants (and ours accepts)."""

    def __init__(self):
        self.project_id = 'gcs-bench'
        self.user_id = 'gcs-bench'
        self.auth_token = None
        self.service_catalog = None

    def to_dict(self):
        return {'project_id': self.project_id, 'user_id': self.user_id}


class Timers:
    """Wrap callables to add up their wall time and count their calls."""

    def __init__(self):
        self.total = {}
        self.calls = {}

    def reset(self):
        self.total.clear()
        self.calls.clear()

    def snapshot(self):
        return {k: {'s': round(self.total[k], 4), 'calls': self.calls[k]}
                for k in self.total}

    def _add(self, name, dt):
        self.total[name] = self.total.get(name, 0.0) + dt
        self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, owner, attr, name=None):
        name = name or attr
        orig = getattr(owner, attr)

        def timed(*args, **kwargs):
            t = time.monotonic()
            try:
                return orig(*args, **kwargs)
            finally:
                self._add(name, time.monotonic() - t)
        setattr(owner, attr, timed)

    def wrap_cm(self, owner, attr, name=None):
        """A context manager: time its enter and exit separately."""
        name = name or attr
        orig = getattr(owner, attr)
        timers = self

        @contextlib.contextmanager
        def timed(*args, **kwargs):
            cm = orig(*args, **kwargs)
            t = time.monotonic()
            try:
                value = cm.__enter__()
            finally:
                timers._add(name + '.enter', time.monotonic() - t)
            try:
                yield value
            except BaseException:
                t = time.monotonic()
                try:
                    if not cm.__exit__(*sys.exc_info()):
                        raise
                finally:
                    timers._add(name + '.exit', time.monotonic() - t)
            else:
                t = time.monotonic()
                try:
                    cm.__exit__(None, None, None)
                finally:
                    timers._add(name + '.exit', time.monotonic() - t)
        setattr(owner, attr, timed)


def _load_conf():
    from glance_store import multi_backend
    from oslo_config import cfg
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.DictOpt('enabled_backends'))
    conf(['--config-file', common.GLANCE_CONF], project='glance')
    multi_backend.register_store_opts(conf)
    return conf


class Bench:
    """One driver's store, the scenarios, and the book-keeping."""

    def __init__(self, driver, workdir, journal, overrides=None):
        self.driver = driver
        self.workdir = workdir
        self.journal = journal
        self.ctx = Context()
        self.timers = Timers()
        self.conf = _load_conf()
        if driver.startswith('ours'):
            self.backend = names.GOLD
            self._make_ours(overrides or {})
        else:
            self.backend = names.BUILTIN
            self._make_builtin(overrides or {})
        self.cinder = self._cinder_client()

    # -- set-up ----------------------------------------------------------

    def _register(self, store, location_class, entry):
        from glance_store import location as gs_location
        gs_location.register_scheme_backend_map({'cinder': {
            self.backend: {'store': store, 'location_class': location_class,
                           'store_entry': entry}}})

    def _make_ours(self, overrides):
        from glance_cinder_store import attach
        from glance_cinder_store import cinder
        from glance_cinder_store import store as store_mod
        from glance_cinder_store import transfer
        overrides.setdefault('cinder_plus_state_dir',
                             os.path.join(self.workdir, 'state'))
        for key, value in overrides.items():
            self.conf.set_override(key, value, group=self.backend)
        store = store_mod.CinderStore(self.conf, backend=self.backend)
        store.configure()
        self._register(store, store_mod.StoreLocation, 'cinder_plus')
        self.store = store
        t = self.timers
        t.wrap(cinder.Volumes, 'create', 'volume_create')
        t.wrap(cinder.Volumes, 'wait_for', 'volume_wait')
        t.wrap(cinder.Volumes, 'extend', 'volume_extend')
        t.wrap(cinder.Volumes, 'replace_metadata', 'volume_metadata')
        t.wrap(cinder.Volumes, 'set_readonly', 'volume_readonly')
        t.wrap(cinder.Volumes, 'get', 'volume_get')
        t.wrap(attach.HostAttachments, '_attach_new', 'attach')
        t.wrap(attach.HostAttachments, '_detach', 'detach')
        t.wrap(attach.Attached, 'extend', 'host_extend')
        t.wrap(transfer, 'write_image', 'write_image')
        t.wrap(cinder.CinderClientFactory, 'client', 'make_client')
        self.attach_counter = 'attach'

    def _make_builtin(self, overrides):
        from glance_store._drivers.cinder import store as builtin
        for key, value in overrides.items():
            self.conf.set_override(key, value, group=self.backend)
        store = builtin.Store(self.conf, backend=self.backend)
        store.configure()
        self._register(store, builtin.StoreLocation, 'cinder')
        self.store = store
        t = self.timers
        api = store.volume_api
        t.wrap(api, 'create', 'volume_create')
        t.wrap(store, '_wait_volume_status', 'volume_wait')
        t.wrap(api, 'extend_volume', 'volume_extend')
        t.wrap(store, '_call_offline_extend', 'volume_extend_offline')
        t.wrap_cm(store, '_open_cinder_volume', 'attach')
        t.wrap(store, '_write_data', 'write_data')
        t.wrap(store, 'get_cinderclient', 'make_client')
        self.attach_counter = 'attach.enter'

    def _cinder_client(self):
        """Our own look-ups (volume gone yet?) as the glance service user."""
        from cinderclient import client as cinder_client
        g = self.conf[self.backend]
        return cinder_client.Client('3.54', session=aio_common.session(
            g.cinder_store_user_name, g.cinder_store_project_name,
            password=g.cinder_store_password,
            auth_url=g.cinder_store_auth_address))

    # -- helpers ---------------------------------------------------------

    def _location(self, url):
        from glance_store import location as gs_location
        return gs_location.get_location_from_uri_and_backend(
            url, self.backend, conf=self.conf)

    def add(self, source, size_arg):
        """Store.add; returns a dict of figures and the location."""
        image_id = str(uuid.uuid4())
        self.journal.write(image_id + '\n')
        self.journal.flush()
        self.timers.reset()
        with common.PeakRss() as rss:
            t = time.monotonic()
            url, size, md5, multihash, _ = self.store.add(
                image_id, source, size_arg, 'sha512', context=self.ctx)
            dt = time.monotonic() - t
        loc = self._location(url)
        vol_id = loc.store_location.volume_id
        vol = self.cinder.volumes.get(vol_id)
        phases = self.timers.snapshot()
        res = {'seconds': dt, 'bytes': size, 'md5': md5,
               'mbps': common.rate(size, dt),
               'allocated_bytes': common.allocated_bytes(vol_id),
               'volume_gb': vol.size,
               'attach_cycles': phases.get(self.attach_counter,
                                           {}).get('calls', 0),
               'extends': sum(phases.get(k, {}).get('calls', 0) for k in (
                   'volume_extend', 'volume_extend_offline')),
               'rss_growth_mib': rss.growth,
               'phases': phases}
        return res, loc

    def get(self, loc, verify_md5=None):
        """Read the whole image; seconds to first and last byte."""
        t = time.monotonic()
        it, size = self.store.get(loc, context=self.ctx)
        first = None
        n = 0
        md5 = hashlib.md5(usedforsecurity=False) if verify_md5 else None
        try:
            for piece in it:
                if first is None:
                    first = time.monotonic() - t
                n += len(piece)
                if md5:
                    md5.update(piece)
        finally:
            close = getattr(it, 'close', None)
            if close:
                close()
        dt = time.monotonic() - t
        if n != size:
            raise AssertionError('read %d bytes of %d' % (n, size))
        if md5 and md5.hexdigest() != verify_md5:
            raise AssertionError('download differs from upload (md5)')
        return {'seconds': dt, 'first_byte_s': first,
                'mbps': common.rate(n, dt)}

    def delete(self, loc):
        vol_id = loc.store_location.volume_id
        t = time.monotonic()
        self.store.delete(loc, context=self.ctx)
        aio_common.wait_volume_gone(self.cinder, vol_id, 300, 0.2)
        return time.monotonic() - t

    def extend_cost(self, extends=3):
        """Seconds of each growth of an attached volume, as add does it.

        The cost per extend for the growth-factor model (tools/bench's
        capacity table): a fresh 1 GiB volume attached read-write, grown
        ``extends`` times by 1 GiB through the store's own grower.
        """
        from glance_cinder_store import store as store_mod
        from oslo_utils import units
        store = self.store
        volumes = store.volumes(self.ctx)
        image_id = str(uuid.uuid4())
        self.journal.write(image_id + '\n')
        self.journal.flush()
        vol = volumes.create(1, 'image-%s' % image_id,
                             {'glance_image_id': image_id,
                              'image_owner': self.ctx.project_id},
                             store.store_conf.cinder_volume_type)
        times = []
        try:
            vol = volumes.wait_for(vol, 'available', ('creating',))
            with contextlib.ExitStack() as stack:
                attached = stack.enter_context(
                    store.attachments.attach(volumes, vol, 'rw'))
                grow = store_mod._Grower(store, volumes, vol, stack,
                                         attached)
                for _ in range(extends):
                    t = time.monotonic()
                    grow((grow.volume.size + 1) * units.Gi)
                    times.append(time.monotonic() - t)
        finally:
            url = 'cinder://%s/%s' % (self.backend, vol.id)
            self.delete(self._location(url))
        return {'seconds': times}

    @contextlib.contextmanager
    def image(self, size, size_arg, zero_fraction=0.0):
        """Add an image; yield (figures, location); delete it after."""
        res, loc = self.add(common.DataSource(size, zero_fraction), size_arg)
        try:
            yield res, loc
        finally:
            res['delete_s'] = self.delete(loc)


def run_child(spec):
    """Entry point of ``tools/bench --driver-child SPEC_JSON``."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # glance_store, os-brick and friends log a lot at INFO; keep quiet
    for name in ('glance_store', 'glance_cinder_store', 'keystoneauth',
                 'cinderclient'):
        logging.getLogger(name).setLevel(logging.WARNING)
    # privsep relays its daemon's eventlet warning; os-brick warns about
    # iSCSI and NVMe set-up this host does not need
    for name in ('os_brick', 'oslo_privsep', 'oslo.privsep.daemon'):
        logging.getLogger(name).setLevel(logging.ERROR)
    common.install_cleanup_handlers()
    if spec.get('use_repo_source', True):
        sys.path.insert(0, common.REPO)
    workdir = tempfile.mkdtemp(prefix='gcs-bench-%s-' % spec['driver'])
    common.on_cleanup('temp dir %s' % workdir,
                      lambda: shutil.rmtree(workdir, ignore_errors=True))
    from oslo_concurrency import lockutils
    lockutils.set_defaults(lock_path=os.path.join(workdir, 'locks'))
    common.random_pool()
    with open(spec['journal'], 'a') as journal:
        bench = Bench(spec['driver'], workdir, journal,
                      spec.get('overrides'))
        try:
            out = run_scenarios(bench, spec)
        finally:
            close = getattr(bench.store, 'close', None)
            if close is not None:
                close()     # ours: deletes the pool's volumes
    if spec['driver'].startswith('ours'):
        # the work tree may change under a long run: say what this child ran
        import glance_cinder_store.store as m
        out['driver_source'] = os.path.dirname(m.__file__)
        out['driver_source_info'] = common.source_info()
        out['driver_source_info'].pop('installed_differs', None)
    with open(spec['out'], 'w') as f:
        json.dump(out, f)


def _attempt(out, name, fn, tries=2):
    """Run a scenario; on failure log, record the error and try once more.

    A failure is a finding (it goes into the JSON's ``errors``), not a
    reason to lose the rest of the run.
    """
    for i in range(tries):
        try:
            return fn()
        except Exception as e:
            msg = '%s: %s' % (type(e).__name__, e)
            out.setdefault('errors', []).append({'scenario': name,
                                                 'error': msg[:500]})
            log('%s FAILED (try %d/%d): %s' % (name, i + 1, tries, msg))
    return None


def _wait_for_pool(bench, timeout=120):
    """With the volume pool on: start measuring once it is full."""
    pool = getattr(bench.store, '_pool', None)
    deadline = time.monotonic() + timeout
    while pool is not None and len(pool) < pool.size:
        if time.monotonic() > deadline:
            log('%s: the volume pool did not fill in %d s'
                % (bench.driver, timeout))
            return
        time.sleep(0.2)


def run_scenarios(bench, spec):
    big = spec['big']            # 1 GiB (quick: 256 MiB)
    sparse = spec['sparse']      # 4 GiB (quick: 1 GiB)
    small = MiB
    out = {}
    name = bench.driver
    only = spec.get('only')

    def want(s):
        return only is None or s in only

    def warm_up():
        # token, microversion, privsep, first attach
        with bench.image(small, small):
            pass
    _attempt(out, 'warm_up', warm_up)

    # First measured add in this process: its peak RSS growth is the extra
    # memory of adding 4 GiB (75% zero blocks, known size).
    def sparse_known():
        log('%s: add %d MiB, 75%% zero blocks, known size'
            % (name, sparse // MiB))
        with bench.image(sparse, sparse, 0.75) as (res, loc):
            pass
        out['sparse_known'] = res
        log('%s:   %.0f MB/s, allocated %.0f MiB, RSS +%.1f MiB'
            % (name, res['mbps'], (res['allocated_bytes'] or 0) / MiB,
               res['rss_growth_mib']))
    if want('sparse_known'):
        _attempt(out, 'sparse_known', sparse_known)

    def sparse_unknown():
        log('%s: add %d MiB, 75%% zero blocks, unknown size'
            % (name, sparse // MiB))
        with bench.image(sparse, 0, 0.75) as (res, loc):
            pass
        out['sparse_unknown'] = res
        log('%s:   %.0f MB/s, %d attach cycle(s), %d extend(s), %d GiB'
            % (name, res['mbps'], res['attach_cycles'], res['extends'],
               res['volume_gb']))
    if want('sparse_unknown'):
        _attempt(out, 'sparse_unknown', sparse_unknown)

    def known():
        log('%s: add %d MiB random, known size' % (name, big // MiB))
        with bench.image(big, big) as (res, loc):
            out['known'] = res
            log('%s:   %.0f MB/s' % (name, res['mbps']))
            if want('download'):
                # warm: one untimed read first (checks the bytes too)
                bench.get(loc, verify_md5=res['md5'] if spec.get(
                    'verify') else None)
                out['download'] = bench.get(loc)
                log('%s: get %d MiB: %.0f MB/s, first byte %.3f s'
                    % (name, big // MiB, out['download']['mbps'],
                       out['download']['first_byte_s']))
    if want('known') or want('download'):
        _attempt(out, 'known', known)

    def unknown():
        log('%s: add %d MiB random, unknown size' % (name, big // MiB))
        with bench.image(big, 0) as (res, loc):
            pass
        out['unknown'] = res
        log('%s:   %.0f MB/s' % (name, res['mbps']))
    if want('unknown'):
        _attempt(out, 'unknown', unknown)

    def small_images():
        adds, gets, deletes = [], [], []
        res = None
        for _ in range(spec.get('small_count', 5)):
            def one():
                with bench.image(small, small) as (r, loc):
                    g = bench.get(loc)
                return r, g
            got = _attempt(out, 'small', one)
            if got is None:
                continue
            res, g = got
            adds.append(res['seconds'])
            gets.append(g['seconds'])
            deletes.append(res['delete_s'])
        out['small'] = {'add_s': adds, 'get_s': gets, 'delete_s': deletes,
                        'add_phases': res and res['phases']}
        log('%s: 1 MiB add %.3f s, get %.3f s (medians of %d)'
            % (name, common.median(adds) or 0, common.median(gets) or 0,
               len(adds)))
    if want('small'):
        _wait_for_pool(bench)
        small_images()

    def extend_cost():
        out['extend_cost'] = bench.extend_cost()
        log('%s: online extends %s s' % (name, ', '.join(
            '%.2f' % t for t in out['extend_cost']['seconds'])))
    if name == 'ours' and want('extend_cost'):
        _attempt(out, 'extend_cost', extend_cost)
    return out
