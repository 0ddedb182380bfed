"""Medians, the ratios of issue 6, its targets, and the printed table."""

from bench_lib import common
from bench_lib.common import median
from bench_lib.common import MiB
from bench_lib.common import ratio


def _med(runs, *path):
    """Median over repeats of runs[i][path...] (lists are flattened)."""
    values = []
    for run in runs:
        v = run
        for key in path:
            if not isinstance(v, dict) or key not in v:
                v = None
                break
            v = v[key]
        if isinstance(v, list):
            values.extend(v)
        elif v is not None:
            values.append(v)
    return median(values)


def _samples(runs, *path):
    values = []
    for run in runs:
        v = run
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, list):
            values.extend(v)
        elif v is not None:
            values.append(v)
    return values


def aggregate(raw, cfg):
    """raw: {'limits': [..], 'driver': {name: [..]}, 'http': [..]}."""
    fig = {}
    lim = raw.get('limits') or []
    if lim:
        fig['limits'] = {k: common.summary(_samples(lim, k))
                         for k in sorted(lim[0])}
    drv = {}
    for name, runs in (raw.get('driver') or {}).items():
        d = {}
        for scen in ('known', 'unknown', 'sparse_known', 'sparse_unknown'):
            if any(scen in r for r in runs):
                d[scen] = {
                    k: common.summary(_samples(runs, scen, k))
                    for k in ('mbps', 'seconds', 'allocated_bytes',
                              'attach_cycles', 'extends', 'volume_gb',
                              'rss_growth_mib', 'delete_s')}
                d[scen]['phases_last_run'] = [
                    r[scen].get('phases') for r in runs if scen in r][-1]
        if any('download' in r for r in runs):
            d['download'] = {k: common.summary(_samples(runs, 'download', k))
                             for k in ('mbps', 'seconds', 'first_byte_s')}
        if any('extend_cost' in r for r in runs):
            d['extend_cost'] = {'seconds': common.summary(
                _samples(runs, 'extend_cost', 'seconds'))}
        if any('small' in r for r in runs):
            d['small'] = {k: common.summary(_samples(runs, 'small', k))
                          for k in ('add_s', 'get_s', 'delete_s')}
            d['small']['add_phases_last_run'] = [
                r['small'].get('add_phases') for r in runs
                if 'small' in r][-1]
        drv[name] = d
    if drv:
        fig['driver'] = drv
    http = raw.get('http') or []
    if http:
        fig['http'] = {}
        for store in http[0]:
            fig['http'][store] = {
                k: common.summary(_samples(http, store, k))
                for k in sorted(http[0][store])}
    return fig


def _m(fig, *path):
    v = fig
    for key in path:
        if not isinstance(v, dict) or key not in v:
            return None
        v = v[key]
    if isinstance(v, dict) and 'median' in v:
        return v['median']
    return v


def ratios(fig, cfg):
    r = {}
    ours, bi = ('driver', 'ours'), ('driver', 'builtin')

    def drv_ratio(scen):
        return ratio(_m(fig, *ours, scen, 'mbps'), _m(fig, *bi, scen, 'mbps'))
    r['upload_known_vs_builtin'] = drv_ratio('known')
    # issue 6 defines the unknown-size target on 4 GiB with 75% zeros
    r['upload_unknown_vs_builtin'] = drv_ratio('sparse_unknown')
    r['upload_unknown_random_vs_builtin'] = drv_ratio('unknown')
    r['upload_sparse_vs_builtin'] = drv_ratio('sparse_known')
    r['upload_unknown_online_extend_vs_builtin'] = ratio(
        _m(fig, 'driver', 'ours_online', 'sparse_unknown', 'mbps'),
        _m(fig, *bi, 'sparse_unknown', 'mbps'))
    r['download_vs_builtin'] = drv_ratio('download')
    limit = None
    dd_w = _m(fig, 'limits', 'dd_write_mbps')
    hash2 = _m(fig, 'limits', 'hash_two_threads_mbps')
    if dd_w and hash2:
        limit = min(dd_w, hash2)
    r['upload_limit_mbps'] = limit
    r['upload_known_vs_limit'] = ratio(_m(fig, *ours, 'known', 'mbps'), limit)
    r['download_vs_dd'] = ratio(_m(fig, *ours, 'download', 'mbps'),
                                _m(fig, 'limits', 'dd_read_mbps'))
    r['small_add_latency_vs_builtin'] = ratio(
        _m(fig, *bi, 'small', 'add_s'), _m(fig, *ours, 'small', 'add_s'))
    # the optional volume pool (cinder_plus_volume_pool_size = 2)
    r['small_add_latency_pool_s'] = _m(fig, 'driver', 'ours_pool', 'small',
                                       'add_s')
    r['small_get_latency_vs_builtin'] = ratio(
        _m(fig, *bi, 'small', 'get_s'), _m(fig, *ours, 'small', 'get_s'))
    r['rss_growth_mib_4gib'] = {
        'ours': _m(fig, *ours, 'sparse_known', 'rss_growth_mib'),
        'builtin': _m(fig, *bi, 'sparse_known', 'rss_growth_mib'),
        'image_mib': cfg['sparse'] // MiB}
    sparse = cfg['sparse']
    a_o = _m(fig, *ours, 'sparse_known', 'allocated_bytes')
    a_b = _m(fig, *bi, 'sparse_known', 'allocated_bytes')
    r['sparse_allocated_bytes'] = {
        'ours': a_o, 'builtin': a_b, 'image_bytes': sparse,
        'ours_fraction': ratio(a_o, sparse),
        'builtin_fraction': ratio(a_b, sparse)}
    r['unknown_attach_cycles'] = {
        'ours': _m(fig, *ours, 'sparse_unknown', 'attach_cycles'),
        'ours_online_extend': _m(fig, 'driver', 'ours_online',
                                 'sparse_unknown', 'attach_cycles'),
        'builtin': _m(fig, *bi, 'sparse_unknown', 'attach_cycles')}

    def h(store, key):
        return _m(fig, 'http', store, key)
    r['http_upload_vs_builtin'] = ratio(h('gold', 'upload_mbps'),
                                        h('builtin', 'upload_mbps'))
    r['http_upload_vs_file'] = ratio(h('gold', 'upload_mbps'),
                                     h('files', 'upload_mbps'))
    r['http_download_vs_file'] = ratio(h('gold', 'download_mbps'),
                                       h('files', 'download_mbps'))
    r['http_download_vs_builtin'] = ratio(h('gold', 'download_mbps'),
                                          h('builtin', 'download_mbps'))
    r['http_first_byte_s'] = {'ours': h('gold', 'first_byte_s'),
                              'builtin': h('builtin', 'first_byte_s'),
                              'file': h('files', 'first_byte_s')}
    r['http_small_upload_latency_vs_builtin'] = ratio(
        h('builtin', 'small_upload_s'), h('gold', 'small_upload_s'))
    r['http_conc_upload_vs_builtin'] = ratio(h('gold', 'conc_upload_mbps'),
                                             h('builtin', 'conc_upload_mbps'))
    r['http_conc_upload_vs_file'] = ratio(h('gold', 'conc_upload_mbps'),
                                          h('files', 'conc_upload_mbps'))
    r['http_conc_upload_cpu_s_each'] = {
        store: {name: h(store, 'conc_upload_%s_cpu_s' % name)
                for name in ('glance', 'cinder', 'db_queue')}
        for store in ('gold', 'files')}
    r['http_conc_upload_cpu_bound_vs_file'] = cpu_bound(
        r['http_conc_upload_cpu_s_each']['gold'], cfg['conc_uploads'],
        h('files', 'conc_upload_wall_s'), cfg.get('nproc'))
    r['http_conc_upload_cpu_cost_vs_file'] = cpu_cost_ratios(
        r['http_conc_upload_cpu_s_each'])
    r['http_conc_download_vs_file'] = ratio(
        h('gold', 'conc_download_mbps'), h('files', 'conc_download_mbps'))
    r['http_conc_download_again_vs_file'] = ratio(
        h('gold', 'conc_download_again_mbps'),
        h('files', 'conc_download_again_mbps'))
    r['http_conc_download_vs_builtin'] = ratio(
        h('gold', 'conc_download_mbps'), h('builtin', 'conc_download_mbps'))
    # issue 12
    r['http_first_byte_warm_s'] = h('gold', 'first_byte_warm_s')
    r['http_small_upload_latency_s'] = h('gold', 'small_upload_s')
    # with the optional volume pool (cinder_plus_volume_pool_size = 2)
    r['http_small_upload_latency_pool_s'] = h('gold_pool', 'small_upload_s')
    r['http_conc_upload_pool_vs_file'] = ratio(
        h('gold_pool', 'conc_upload_mbps'), h('files', 'conc_upload_mbps'))
    r['http_download_warm_vs_file'] = ratio(h('gold', 'download_warm_mbps'),
                                            h('files', 'download_warm_mbps'))
    r['http_download_cold_vs_dd'] = ratio(h('gold', 'download_mbps'),
                                          _m(fig, 'limits', 'dd_read_mbps'))
    # the first download of an image nobody warmed up (the warm-up after
    # upload off, as for an image read long after its upload)
    r['http_download_uncached_vs_dd'] = ratio(
        h('gold_pool', 'download_uncached_mbps'),
        _m(fig, 'limits', 'dd_read_mbps'))
    # what the API path itself allows: Glance's own store, read from
    # memory (its upload left the file in the page cache), against dd
    r['http_file_download_vs_dd'] = ratio(h('files', 'download_mbps'),
                                          _m(fig, 'limits', 'dd_read_mbps'))
    r['http_download_cpu_s_per_gib'] = {
        'ours_warm': h('gold', 'download_warm_cpu_s_per_gib'),
        'ours_cold': h('gold', 'download_cpu_s_per_gib'),
        'builtin_warm': h('builtin', 'download_warm_cpu_s_per_gib'),
        'file_warm': h('files', 'download_warm_cpu_s_per_gib')}
    r['capacity_model'] = capacity_model(
        _m(fig, 'driver', 'ours', 'extend_cost', 'seconds'))
    return r


def cpu_bound(cpu_each, uploads, file_wall_s, nproc):
    """The most of the file store's figure that this host's CPUs allow.

    Where glance-api, Cinder, its database and its queue share the CPUs
    (an all-in-one), the uploads cannot end before all of them together
    have used ``uploads * sum(cpu_each)`` CPU seconds on ``nproc`` CPUs,
    however the work overlaps.
    """
    if not file_wall_s or not nproc or None in cpu_each.values():
        return None
    fastest = uploads * sum(cpu_each.values()) / nproc
    return ratio(file_wall_s, fastest)


def cpu_cost_ratios(cpu_each):
    """The file store's CPU per upload divided by ours, three ways.

    Where the uploads keep every CPU of the host busy, both stores turn CPU
    into uploads about equally well, so the measured ratio follows what
    each upload costs: ``all_in_one`` counts every service (it predicts
    the measured ratio on this host), ``cinder_elsewhere`` only glance-api
    (a cloud whose Cinder runs on other hosts), ``cinder_alone`` only
    Cinder, its database and its queue (the most any driver could reach
    here, even one whose glance-api part cost nothing).
    """
    ours, files = cpu_each['gold'], cpu_each['files']
    if None in ours.values() or None in files.values():
        return dict.fromkeys(('all_in_one', 'cinder_elsewhere',
                              'cinder_alone'))
    theirs = sum(files.values())
    return {
        'all_in_one': ratio(theirs, sum(ours.values())),
        'cinder_elsewhere': ratio(theirs, ours['glance']),
        'cinder_alone': ratio(theirs, ours['cinder'] + ours['db_queue']),
    }


def capacity_model(extend_s, streams_gb=(2, 10, 50), factors=(2.0, 1.33)):
    """Extends, unused GiB and their seconds for streams of unknown size.

    Modelled, not streamed: the sizes come from the store's own growth
    rule (``store.grown_size_gb``) and the seconds are the extends times
    the measured cost of one online extend (``extend_s``, the median of
    the driver level's ``extend_cost``).  Writing 50 GiB through the two
    hash functions would take minutes of a shared machine.
    """
    import sys
    if common.REPO not in sys.path:
        sys.path.insert(0, common.REPO)
    from glance_cinder_store import store as store_mod
    gi = 1 << 30
    rows = []
    for factor in factors:
        for n in streams_gb:
            size, extends = 1, 0
            while size < n:
                size = store_mod.grown_size_gb(size, size * gi + 1, factor,
                                               64)
                extends += 1
            rows.append({'stream_gb': n, 'factor': factor,
                         'extends': extends, 'volume_gb': size,
                         'unused_gb': size - n,
                         'unused_fraction': round((size - n) / size, 3),
                         'extend_seconds': (None if extend_s is None else
                                            round(extends * extend_s, 1))})
    return {'extend_s_measured': extend_s, 'rows': rows}


def _ge(v, t):
    return None if v is None else v >= t


def targets(r):
    """Issue 6's targets: value, target, met (None when not measured)."""
    t = {}

    def add(name, value, target, met):
        t[name] = {'value': value, 'target': target, 'met': met}
    add('upload_known_vs_builtin', r['upload_known_vs_builtin'], '>= 3',
        _ge(r['upload_known_vs_builtin'], 3))
    add('upload_known_vs_limit', r['upload_known_vs_limit'], '>= 0.8',
        _ge(r['upload_known_vs_limit'], 0.8))
    cyc = r['unknown_attach_cycles']['ours']
    v = r['upload_unknown_vs_builtin']
    add('upload_unknown_vs_builtin', v, '>= 4 with one attach',
        None if v is None else (v >= 4 and cyc == 1))
    frac = r['sparse_allocated_bytes']['ours_fraction']
    v = r['upload_sparse_vs_builtin']
    add('upload_sparse_vs_builtin', v, '>= 4 and <= 30% allocated',
        None if v is None or frac is None else (v >= 4 and frac <= 0.30))
    add('download_vs_builtin', r['download_vs_builtin'], '>= 1.5',
        _ge(r['download_vs_builtin'], 1.5))
    add('download_vs_dd', r['download_vs_dd'], '>= 0.9',
        _ge(r['download_vs_dd'], 0.9))
    add('small_add_latency_vs_builtin', r['small_add_latency_vs_builtin'],
        '>= 2', _ge(r['small_add_latency_vs_builtin'], 2))
    rss = r['rss_growth_mib_4gib']
    add('rss_growth_mib_4gib', rss['ours'], '<= builtin + 32 MiB',
        None if rss['ours'] is None or rss['builtin'] is None
        else rss['ours'] <= rss['builtin'] + 32)
    add('http_upload_vs_builtin', r['http_upload_vs_builtin'], '>= 2',
        _ge(r['http_upload_vs_builtin'], 2))
    v = r['http_upload_vs_file']
    add('http_upload_vs_file', v, '> 1', None if v is None else v > 1)
    add('http_download_vs_file', r['http_download_vs_file'], '>= 1',
        _ge(r['http_download_vs_file'], 1))
    # issue 12
    add('http_download_warm_vs_file', r['http_download_warm_vs_file'],
        '>= 1', _ge(r['http_download_warm_vs_file'], 1))
    add('http_download_cold_vs_dd', r['http_download_cold_vs_dd'],
        '>= 0.9', _ge(r['http_download_cold_vs_dd'], 0.9))
    add('http_download_uncached_vs_dd', r['http_download_uncached_vs_dd'],
        'informational: the first download without the warm-up', None)
    add('http_file_download_vs_dd', r['http_file_download_vs_dd'],
        'informational: the file store through the same API', None)
    cpu = r['http_download_cpu_s_per_gib']
    add('http_download_cpu_vs_file', cpu['ours_warm'], '<= file (%s)' % (
        None if cpu['file_warm'] is None else '%.2f' % cpu['file_warm']),
        None if cpu['ours_warm'] is None or cpu['file_warm'] is None
        else cpu['ours_warm'] <= cpu['file_warm'])
    v = r['http_first_byte_warm_s']
    add('http_first_byte_warm_s', v, '<= 0.05',
        None if v is None else v <= 0.05)
    add('http_conc_download_vs_file', r['http_conc_download_vs_file'],
        '>= 1', _ge(r['http_conc_download_vs_file'], 1))
    add('http_conc_download_again_vs_file',
        r['http_conc_download_again_vs_file'],
        'informational: the same burst a moment later', None)
    add('http_conc_upload_vs_file', r['http_conc_upload_vs_file'],
        '>= 0.8', _ge(r['http_conc_upload_vs_file'], 0.8))
    add('http_conc_upload_cpu_bound_vs_file',
        r['http_conc_upload_cpu_bound_vs_file'],
        'informational: the most the CPU time the uploads cost (glance-api, '
        'Cinder, database, queue) allows on this host\'s CPUs', None)
    costs = r['http_conc_upload_cpu_cost_vs_file']
    add('http_conc_upload_cpu_cost_vs_file.all_in_one',
        costs['all_in_one'], 'informational: the file store\'s CPU per '
        'upload over ours, every service counted; what the CPUs predict',
        None)
    add('http_conc_upload_cpu_cost_vs_file.cinder_elsewhere',
        costs['cinder_elsewhere'], 'informational: the same, glance-api '
        'only (Cinder on other hosts)', None)
    add('http_conc_upload_cpu_cost_vs_file.cinder_alone',
        costs['cinder_alone'], 'informational: the same, Cinder, database '
        'and queue only; below 0.8 no driver meets the goal on this host',
        None)
    # the way to the goal is the optional pool: judged with it on;
    # the default (no pool) is reported beside it
    v = r['http_small_upload_latency_pool_s']
    add('http_small_upload_latency_pool_s', v, '<= 0.2',
        None if v is None else v <= 0.2)
    v = r['http_small_upload_latency_s']
    add('http_small_upload_latency_s', v, '<= 0.2 with the pool; '
        'informational without', None)
    add('http_conc_upload_pool_vs_file', r['http_conc_upload_pool_vs_file'],
        '>= 0.8 (informational: the pool on)', None)
    return t


# ------------------------------------------------------------------ table

def _f(v, fmt='%.0f'):
    if v is None:
        return '-'
    return fmt % v


def table(fig, r, t, cfg):
    lines = []
    big, sparse = cfg['big'] // MiB, cfg['sparse'] // MiB

    def row(*cells, widths=(44, 12, 12, 12)):
        lines.append('  '.join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))).rstrip())

    lim = fig.get('limits')
    if lim:
        lines.append('Limits (MB/s, median of %d)' % len(
            lim['dd_write_mbps']['samples']))
        for key, label in (
                ('dd_write_direct_mbps', 'loop device write, O_DIRECT'),
                ('dd_write_fdatasync_mbps', 'loop device write, buffered'
                 ' + fdatasync'),
                ('dd_read_direct_mbps', 'loop device read, O_DIRECT'),
                ('dd_read_cold_mbps', 'loop device read, buffered, cold'),
                ('hash_one_thread_mbps', 'md5 + sha512, one thread'),
                ('hash_two_threads_mbps', 'md5 and sha512, two threads'),
                ('hash_md5_only_mbps', 'md5 alone'),
                ('hash_sha512_only_mbps', 'sha512 alone'),
                ('mem_first_touch_mbps', 'fresh memory, first touch (VM)'),
                ('mem_touch_again_mbps', 'same memory, touched again'),
                ('engine_write_random_mbps', 'our engine alone: write random'),
                ('engine_write_sparse_mbps', 'our engine alone: write 75% '
                 'zeros'),
                ('engine_read_mbps', 'our engine alone: read')):
            if key in lim:
                row(label, _f(_m(lim, key)))
        lines.append('')

    drv = fig.get('driver')
    if drv:
        lines.append('Driver level, in-process (MB/s unless noted)')
        row('scenario', 'ours', 'builtin', 'ours/builtin')

        def d(name, scen, key):
            return _m(drv, name, scen, key)

        def drow(label, scen, key='mbps', fmt='%.0f', inverse=False):
            o, b = d('ours', scen, key), d('builtin', scen, key)
            rr = ratio(b, o) if inverse else ratio(o, b)
            row(label, _f(o, fmt), _f(b, fmt), _f(rr, '%.2fx'))
        drow('add %d MiB random, known size' % big, 'known')
        drow('add %d MiB random, unknown size' % big, 'unknown')
        drow('add %d MiB 75%% zeros, known size' % sparse, 'sparse_known')
        o = d('ours', 'sparse_known', 'allocated_bytes')
        b = d('builtin', 'sparse_known', 'allocated_bytes')
        row('  allocated on the backend (MiB)', _f(o and o / MiB),
            _f(b and b / MiB))
        drow('add %d MiB 75%% zeros, unknown size' % sparse,
             'sparse_unknown')
        row('  attach cycles / extends',
            '%s / %s' % (_f(d('ours', 'sparse_unknown', 'attach_cycles')),
                         _f(d('ours', 'sparse_unknown', 'extends'))),
            '%s / %s' % (_f(d('builtin', 'sparse_unknown', 'attach_cycles')),
                         _f(d('builtin', 'sparse_unknown', 'extends'))))
        if 'ours_online' in drv:
            o = d('ours_online', 'sparse_unknown', 'mbps')
            row('  ours with cinder_do_extend_attached', _f(o),
                _f(d('builtin', 'sparse_unknown', 'mbps')),
                _f(ratio(o, d('builtin', 'sparse_unknown', 'mbps')),
                   '%.2fx'))
            row('    attach cycles / extends',
                '%s / %s' % (
                    _f(d('ours_online', 'sparse_unknown', 'attach_cycles')),
                    _f(d('ours_online', 'sparse_unknown', 'extends'))))
        drow('get %d MiB (warm)' % big, 'download')
        drow('  first byte (s)', 'download', 'first_byte_s', '%.3f', True)
        drow('1 MiB add latency (s)', 'small', 'add_s', '%.3f', True)
        if 'ours_pool' in drv:
            o = d('ours_pool', 'small', 'add_s')
            b = d('builtin', 'small', 'add_s')
            row('  ours with a volume pool of 2', _f(o, '%.3f'),
                _f(b, '%.3f'), _f(ratio(b, o), '%.2fx'))
        drow('1 MiB get latency (s)', 'small', 'get_s', '%.3f', True)
        drow('peak RSS growth, %d MiB add (MiB)' % sparse, 'sparse_known',
             'rss_growth_mib', '%.1f', True)
        lines.append('')

    http = fig.get('http')
    if http:
        lines.append('Through glance-api (python-glanceclient; MB/s unless '
                     'noted)')
        row('scenario', 'gold (ours)', 'builtin', 'files')

        def hrow(label, key, fmt='%.0f'):
            row(label, *[_f(_m(http, s, key), fmt)
                         for s in ('gold', 'builtin', 'files')])
        hrow('upload %d MiB, size declared' % (cfg['http_big'] // MiB),
             'upload_mbps')
        hrow('download %d MiB (first read)' % (cfg['http_big'] // MiB),
             'download_mbps')
        hrow('  time to first byte (s)', 'first_byte_s', '%.3f')
        hrow('  glance-api CPU (s per GiB)', 'download_cpu_s_per_gib',
             '%.2f')
        hrow('download again (warm)', 'download_warm_mbps')
        hrow('  time to first byte (s)', 'first_byte_warm_s', '%.3f')
        hrow('  glance-api CPU (s per GiB)', 'download_warm_cpu_s_per_gib',
             '%.2f')
        hrow('1 MiB upload latency (s)', 'small_upload_s', '%.3f')
        row('  ours with a volume pool of 4 (s)',
            _f(_m(http, 'gold_pool', 'small_upload_s'), '%.3f'), '-', '-')
        hrow('1 MiB download latency (s)', 'small_download_s', '%.3f')
        hrow('%d concurrent uploads of %d MiB, total' % (
            cfg['conc_uploads'], cfg['conc_size'] // MiB),
            'conc_upload_mbps')
        row('  ours with a volume pool of 4',
            _f(_m(http, 'gold_pool', 'conc_upload_mbps')), '-', '-')
        for name, label in (('glance', 'glance-api'), ('cinder', 'Cinder'),
                            ('db_queue', 'database and queue')):
            hrow('  CPU of %s per upload (s)' % label,
                 'conc_upload_%s_cpu_s' % name, '%.2f')
        hrow('%d concurrent downloads of one image, total' %
             cfg['conc_downloads'], 'conc_download_mbps')
        hrow('  the same burst again', 'conc_download_again_mbps')
        lines.append('')

    cap = r.get('capacity_model')
    if cap and cap['rows']:
        lines.append('Unknown sizes, modelled (one online extend: %s s)'
                     % _f(cap['extend_s_measured'], '%.2f'))
        row('stream GiB / factor', 'extends', 'unused GiB', 'extend s')
        for c in cap['rows']:
            row('%d GiB, factor %.2f' % (c['stream_gb'], c['factor']),
                str(c['extends']), '%d (%.0f%%)' % (
                    c['unused_gb'], 100 * c['unused_fraction']),
                _f(c['extend_seconds'], '%.1f'))
        lines.append('')

    lines.append('Issue 6 and 12 targets')
    row('ratio', 'value', 'target', 'met', widths=(52, 8, 26, 6))
    for name, v in t.items():
        val = v['value']
        txt = _f(val, '%.1f MiB' if name.startswith('rss') else '%.2f')
        row(name, txt, v['target'],
            {True: 'yes', False: 'NO', None: '-'}[v['met']],
            widths=(52, 8, 26, 6))
    sa = r['sparse_allocated_bytes']
    lines.append('sparse allocated: ours %s, builtin %s of the image' % (
        _f(sa['ours_fraction'] and 100 * sa['ours_fraction'], '%.1f%%'),
        _f(sa['builtin_fraction'] and 100 * sa['builtin_fraction'],
           '%.1f%%')))
    fb = r['http_first_byte_s']
    lines.append('http first byte (s): ours %s, builtin %s, file %s' % (
        _f(fb['ours'], '%.3f'), _f(fb['builtin'], '%.3f'),
        _f(fb['file'], '%.3f')))
    return '\n'.join(lines)
