"""glance-cinder-store-check: is this host ready to serve cinder_plus stores?

Checks what an operator would otherwise find out from a failed upload:
Cinder reachable with the store's credentials and new enough, the volume
type present, the state folder writable, the privileged helpers in place;
with ``--attach-test`` also a real attach round trip (a 1 GiB volume of the
store's type is created, attached read-only on this host, a block read,
detached and deleted; nothing is left behind, also when a step fails).
One line per check (or ``--format json``); exit status 0 when every check
passed, 1 when one failed, 2 on a usage or configuration error.  Run it as
the glance-api user.
"""

import os
import sys
import time
import uuid

from oslo_config import cfg
from oslo_log import log

from glance_cinder_store import cinder
from glance_cinder_store.cmd import tool
from glance_cinder_store import holders
from glance_cinder_store import privileged
from glance_cinder_store.privileged import acl
from glance_cinder_store import transfer

LOG = log.getLogger(__name__)

PROG = 'glance-cinder-store-check'
EPILOG = ('Exit status: 0 every check passed; 1 a check failed (see its '
          'FAIL line); 2 usage or configuration error (bad option, '
          'unreadable configuration, no cinder_plus store).')
CLI_OPTS = [
    cfg.BoolOpt('attach-test', default=False,
                help='Also create a 1 GiB volume of each store\'s type, '
                     'attach it read-only on this host, read a block, '
                     'detach and delete it.'),
]
#: What the attach test reads.
BLOCK = 64 * 1024
#: Statuses a volume passes through on its way back to 'available'.
_SETTLING = ('creating', 'attaching', 'reserved', 'in-use', 'detaching')


def _checks(store, attach_test):
    """(name, function) of each check; a function gets the Volumes or None."""
    conf = store.store_conf

    def cinder_api(volumes):
        if volumes is None:
            raise RuntimeError('no Cinder client')
        version = store.clients.server_version.get_string()
        extend = ('online extend available' if
                  store.clients.online_extend_supported else
                  'no online extend')
        return 'Cinder API up to %s (%s)' % (version, extend)

    def volume_type(volumes):
        name = conf.cinder_volume_type
        if not name:
            return 'no cinder_volume_type: Cinder\'s default type is used'
        if volumes is None:
            raise RuntimeError('skipped: Cinder unreachable')
        vtype = volumes.volume_type(name)
        return 'volume type %r exists (%s)' % (
            name, 'multiattach' if 'multiattach' in str(
                vtype.extra_specs) else 'not multiattach: readers on '
            'several glance hosts take turns')

    def state_dir(volumes):
        records = holders.RecordStore(conf.cinder_plus_state_dir)
        probe = os.path.join(records.dir, '.probe')
        with open(probe, 'w') as f:
            f.write('ok')
        os.unlink(probe)
        return '%s writable' % conf.cinder_plus_state_dir

    def privsep(volumes):
        path = conf.rootwrap_config
        if not os.path.exists(path):
            raise RuntimeError('%s missing' % path)
        privileged.init(path)
        if acl.ping() != 0:
            raise RuntimeError('privileged daemon is not root')
        return 'sudo glance-rootwrap %s privsep-helper works' % path

    def attach(volumes):
        if volumes is None:
            raise RuntimeError('skipped: Cinder unreachable')
        return attach_round_trip(store, volumes)

    yield 'cinder', cinder_api
    yield 'volume type', volume_type
    yield 'state dir', state_dir
    yield 'privsep', privsep
    if attach_test:
        yield 'attach', attach


def attach_round_trip(store, volumes):
    """Create, attach read-only, read, detach and delete a 1 GiB volume.

    The volume carries an upload mark of this process, so that if the tool
    dies half-way the self-healing pass deletes it like a dead upload.
    """
    started = time.monotonic()
    name = 'glance-cinder-store-check-%s' % uuid.uuid4().hex[:12]
    volume = volumes.create(
        1, name, holders.UploadMark.mine().metadata(),
        store.store_conf.cinder_volume_type)
    try:
        volume = volumes.wait_for(volume, 'available', ('creating',))
        with store.attachments.attach(volumes, volume, 'ro') as attached:
            data = b''.join(transfer.read_range(attached.target, 0, BLOCK,
                                                chunk_size=BLOCK))
            device = attached.target
    finally:
        _discard(store, volumes, volume.id)
    return ('volume %s attached read-only at %s, %d bytes read, detached '
            'and deleted (%.1fs)' % (volume.id, device
                                     if isinstance(device, str) else
                                     type(device).__name__, len(data),
                                     time.monotonic() - started))


def _discard(store, volumes, volume_id):
    """Detach (a lingering read-only attachment too) and delete."""
    try:
        store.attachments.release_idle(volumes, volume_id)
        try:
            volumes.wait_for(volumes.get(volume_id), 'available', _SETTLING)
        except cinder.VolumeFailed:
            pass        # an error status: delete it all the same
        volumes.delete(volume_id)
    except Exception as e:
        raise RuntimeError('test volume %s left behind: %s' % (volume_id, e))


def run_checks(conf, stores):
    """One result dict per store and check."""
    results = []
    for store_id, store in stores.items():
        try:
            volumes, error = store.volumes(), None
        except Exception as e:
            volumes, error = None, e
        for name, check in _checks(store, conf.attach_test):
            try:
                if name == 'cinder' and error is not None:
                    raise error
                ok, message = True, check(volumes)
            except Exception as e:
                LOG.debug('check %s of store %s failed', name, store_id,
                          exc_info=True)
                ok, message = False, str(e)
            results.append({'store': store_id, 'check': name, 'ok': ok,
                            'message': message})
    return results


def body(conf, stores):
    results = run_checks(conf, stores)
    ok = all(r['ok'] for r in results)
    tool.emit(conf, {'ok': ok, 'results': results},
              ['%-5s %-8s %-12s %s' % ('OK' if r['ok'] else 'FAIL',
                                       r['store'], r['check'], r['message'])
               for r in results])
    return tool.EXIT_OK if ok else tool.EXIT_PROBLEMS


def main(argv=None):
    return tool.run(body, argv, PROG, __doc__.splitlines()[0], EPILOG,
                    CLI_OPTS)


if __name__ == '__main__':
    sys.exit(main())
