"""The rootwrap filters we ship: parsed by oslo.rootwrap, allow nothing.

Our privileged step runs in a privsep daemon (privileged/), which
oslo.rootwrap always lets start; no command of ours needs a filter.
"""

import os
import sys

from oslo_rootwrap import wrapper
import pytest

FILTERS = os.path.join(os.path.dirname(__file__), '..', '..', 'etc',
                       'rootwrap.d')


@pytest.fixture(scope='module')
def filters():
    loaded = wrapper.load_filters([FILTERS])
    assert loaded
    return loaded


def allowed(filters, cmd):
    try:
        wrapper.match_filter(filters, cmd.split(), exec_dirs=[
            '/usr/bin', '/bin', os.path.dirname(sys.executable)])
        return True
    except (wrapper.NoFilterMatched, wrapper.FilterMatchNotExecutable):
        return False


@pytest.mark.parametrize('cmd', [
    'privsep-helper --config-file /etc/glance/glance-api.conf '
    '--privsep_context os_brick.privileged.default '
    '--privsep_sock_path /tmp/tmpab_12/privsep.sock',
    'privsep-helper --config-file /etc/glance/glance-api.conf '
    '--privsep_context glance_cinder_store.privileged.default '
    '--privsep_sock_path /tmp/tmpab_12/privsep.sock',
])
def test_commands_we_run_are_allowed(filters, cmd):
    assert allowed(filters, cmd)


@pytest.mark.parametrize('cmd', [
    'chown root /etc/shadow',
    'chown 998 /dev/loop3',
    'mount -t nfs host:/x /mnt',
    'umount /',
    'setfacl -m u:998:rw /dev/loop3',
    'setfacl -m u:998:rw /etc/shadow',
    'chmod 666 /dev/loop3',
    'dd if=/dev/zero of=/dev/sda',
    'sh -c id',
])
def test_anything_else_is_refused(filters, cmd):
    assert not allowed(filters, cmd)
