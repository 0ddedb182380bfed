"""Ceph RBD rows: ours (store ``ceph``) against the built-in driver
(store ``builtin-ceph``) on the aio's one-node Ceph, upload and download.

Driver level: ``Store.add`` / ``Store.get`` in a child process per driver
(as bench_lib.driver does for the loop backend), configured from
glance-api.conf.  Through the API: the same through glance-api.  Only
when the cloud has Ceph (``tools/aio`` with AIO_CEPH=1): otherwise the
part reports itself skipped.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from bench_lib import common
from bench_lib.common import log
from bench_lib.common import MiB

STORES = {'ours': 'ceph', 'builtin': 'builtin-ceph'}
KEYRING = '/etc/ceph/ceph.client.cinder.keyring'


def available():
    return os.path.exists(KEYRING)


# ------------------------------------------------------------ driver level

def _child(driver, size, out_path):
    """In the child: one upload and one download with one driver."""
    import logging
    logging.basicConfig(level=logging.WARNING)
    for name in ('os_brick', 'oslo_privsep', 'oslo.privsep.daemon'):
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.path.insert(0, common.REPO)
    from glance_store import location as gs_location
    from oslo_concurrency import lockutils

    from bench_lib import driver as drv
    # inside the parent's work folder, which tools/bench removes
    workdir = tempfile.mkdtemp(prefix='ceph-%s-' % driver,
                               dir=os.path.dirname(out_path))
    lockutils.set_defaults(lock_path=os.path.join(workdir, 'locks'))
    backend = STORES[driver]
    conf = drv._load_conf()
    if driver == 'ours':
        from glance_cinder_store import store as mod
        conf.set_override('cinder_plus_state_dir',
                          os.path.join(workdir, 'state'), group=backend)
        conf.set_override('cinder_plus_attach_grace_period', 0,
                          group=backend)
        entry = 'cinder_plus'
    else:
        from glance_store._drivers.cinder import store as mod
        entry = 'cinder'
    store = mod.Store(conf, backend=backend)
    store.configure()
    gs_location.register_scheme_backend_map({'cinder': {backend: {
        'store': store, 'location_class': mod.StoreLocation,
        'store_entry': entry}}})
    ctx = drv.Context()
    out = {}
    t = time.monotonic()
    url, written, _, _, _ = store.add(str(uuid.uuid4()),
                                      common.DataSource(size), size,
                                      'sha512', context=ctx)
    out['upload_mbps'] = common.rate(written, time.monotonic() - t)
    loc = gs_location.get_location_from_uri_and_backend(url, backend,
                                                        conf=conf)
    try:
        t = time.monotonic()
        it, _ = store.get(loc, context=ctx)
        n = sum(len(piece) for piece in it)
        out['download_mbps'] = common.rate(n, time.monotonic() - t)
    finally:
        store.delete(loc, context=ctx)
    with open(out_path, 'w') as f:
        json.dump(out, f)


def run_driver(size, workdir):
    figures = {}
    for driver in ('ours', 'builtin'):
        out = os.path.join(workdir, 'ceph-%s.json' % driver)
        rc = subprocess.run(
            # as a module: run as a script, bench_lib/http.py would shadow
            # the standard library's http
            [sys.executable, '-m', 'bench_lib.ceph', driver, str(size),
             out], cwd=common.TOOLS,
            env=dict(os.environ, PYTHONPATH=common.TOOLS)).returncode
        if rc or not os.path.exists(out):
            log('ceph driver level %s: child exited %d' % (driver, rc))
            continue
        with open(out) as f:
            figures[driver] = json.load(f)
        log('ceph driver %-7s upload %d MiB: %.0f MB/s, download %.0f MB/s'
            % (driver, size // MiB, figures[driver]['upload_mbps'],
               figures[driver]['download_mbps']))
    return figures


# ------------------------------------------------------------ through the API

def run_http(api, size):
    figures = {}
    for driver, store in STORES.items():
        image_id = api.create()
        try:
            up = api.upload(image_id, size, store)
            _, down = api.download(image_id, size)
        finally:
            api.delete([image_id])
        figures[driver] = {'upload_mbps': common.rate(size, up),
                           'download_mbps': common.rate(size, down)}
        log('ceph http %-7s upload %d MiB: %.0f MB/s, download %.0f MB/s'
            % (driver, size // MiB, figures[driver]['upload_mbps'],
               figures[driver]['download_mbps']))
    return figures


def run(cfg, workdir):
    """Figures of every repeat: {'driver': [...], 'http': [...]}."""
    if not available():
        log('ceph: no Ceph in this cloud (%s missing): skipped' % KEYRING)
        return None
    raw = {'driver': [], 'http': []}
    api = None
    for rep in range(cfg['repeat']):
        log('ceph, repeat %d/%d' % (rep + 1, cfg['repeat']))
        raw['driver'].append(run_driver(cfg['big'], workdir))
        if api is None:
            from bench_lib import http
            api = http.Api()
        raw['http'].append(run_http(api, cfg['http_big']))
    return raw


def table(raw, cfg):
    """The Ceph rows: median MB/s of ours and the built-in, and the ratio."""
    if not raw:
        return ''
    lines = ['', 'Ceph RBD (one-node Ceph, store ceph vs builtin-ceph), '
             'MB/s, median of %d' % cfg['repeat'],
             '%-44s %12s %12s %12s' % ('', 'ours', 'built-in', 'ratio')]
    for level, size in (('driver', cfg['big']), ('http', cfg['http_big'])):
        for key in ('upload_mbps', 'download_mbps'):
            vals = {d: common.median([r[d][key] for r in raw[level]
                                      if d in r] or [0])
                    for d in STORES}
            label = '%s %s %d MiB' % ('driver' if level == 'driver'
                                      else 'API', key.split('_')[0],
                                      size // MiB)
            ratio = (vals['ours'] / vals['builtin'] if vals['builtin']
                     else float('nan'))
            lines.append('%-44s %12.0f %12.0f %11.2fx' % (
                label, vals['ours'], vals['builtin'], ratio))
    return '\n'.join(lines)


if __name__ == '__main__':
    _child(sys.argv[1], int(sys.argv[2]), sys.argv[3])
