"""glance-cinder-store-check: is this host ready to serve cinder_plus stores?

Checks what an operator would otherwise find out from a failed upload:
Cinder reachable with the store's credentials and new enough, the volume
type present, the state folder writable, the privileged helpers in place.
Prints one line per check and exits non-zero if any failed.
"""

import os
import sys

from glance_cinder_store.cmd import stores as stores_mod
from glance_cinder_store import holders
from glance_cinder_store import privileged
from glance_cinder_store.privileged import acl


def _checks(store_id, store):
    conf = store.store_conf

    def cinder_api():
        volumes = store.volumes()
        version = store.clients.server_version.get_string()
        extend = ('online extend available' if
                  store.clients.online_extend_supported else
                  'no online extend')
        return volumes, 'Cinder API up to %s (%s)' % (version, extend)

    def volume_type(volumes):
        name = conf.cinder_volume_type
        if not name:
            return 'no cinder_volume_type: Cinder\'s default type is used'
        vtype = volumes.volume_type(name)
        return 'volume type %r exists (%s)' % (
            name, 'multiattach' if 'multiattach' in str(
                vtype.extra_specs) else 'not multiattach: readers on '
            'several glance hosts take turns')

    def state_dir():
        records = holders.RecordStore(conf.cinder_plus_state_dir)
        probe = os.path.join(records.dir, '.probe')
        with open(probe, 'w') as f:
            f.write('ok')
        os.unlink(probe)
        return '%s writable' % conf.cinder_plus_state_dir

    def privsep():
        path = conf.rootwrap_config
        if not os.path.exists(path):
            raise RuntimeError('%s missing' % path)
        privileged.init(path)
        if acl.ping() != 0:
            raise RuntimeError('privileged daemon is not root')
        return 'sudo glance-rootwrap %s privsep-helper works' % path

    yield 'cinder', cinder_api
    yield 'volume type', volume_type
    yield 'state dir', state_dir
    yield 'privsep', privsep


def main(argv=None):
    conf, stores = stores_mod.load(sys.argv[1:] if argv is None else argv,
                                   'glance-cinder-store-check')
    if not stores:
        print('no cinder_plus store is configured')
        return 1
    failed = 0
    for store_id, store in stores.items():
        volumes = None
        for name, check in _checks(store_id, store):
            try:
                if name == 'volume type':
                    if volumes is None:
                        raise RuntimeError('skipped: Cinder unreachable')
                    message = check(volumes)
                elif name == 'cinder':
                    volumes, message = check()
                else:
                    message = check()
                print('OK    %-8s %-12s %s' % (store_id, name, message))
            except Exception as e:
                failed += 1
                print('FAIL  %-8s %-12s %s' % (store_id, name, e))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
