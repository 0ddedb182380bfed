"""The one place outside os-brick's privsep that asks for root.

glance-api runs as an unprivileged user and block devices belong to root.
Instead of handing the device to that user (``chown``, which the built-in
driver does and which takes it away from whoever else uses it, e.g. qemu for
a nova instance on the same host) we add and later remove an ACL entry for
our uid only.  Every command here has a matching, narrow filter in
``etc/rootwrap.d/glance_cinder_plus.filters``.
"""

import logging
import os
import shlex

from oslo_concurrency import processutils

LOG = logging.getLogger(__name__)


def root_helper(rootwrap_config):
    return 'sudo glance-rootwrap %s' % rootwrap_config


class DeviceAccess:
    """Grant this process's user read (and write) access to a device."""

    def __init__(self, rootwrap_config, uid=None):
        self.helper = root_helper(rootwrap_config)
        self.uid = os.getuid() if uid is None else uid

    def _run(self, *cmd):
        processutils.execute(*cmd, run_as_root=True,
                             root_helper=self.helper)

    def needed(self, path, writable):
        mode = os.R_OK | (os.W_OK if writable else 0)
        return not os.access(path, mode)

    def grant(self, path, writable):
        """Return True when an ACL entry was added (and must be revoked)."""
        if self.uid == 0 or not self.needed(path, writable):
            return False
        perms = 'rw' if writable else 'r'
        self._run('setfacl', '-m', 'u:%d:%s' % (self.uid, perms),
                  os.path.realpath(path))
        return True

    def revoke(self, path):
        try:
            self._run('setfacl', '-x', 'u:%d' % self.uid,
                      os.path.realpath(path))
        except (processutils.ProcessExecutionError, OSError) as e:
            # The device may already be gone (disconnected by a crash
            # recovery); there is nothing left to revoke then.
            LOG.warning('could not remove access to %s: %s', path, e)

    def argv(self):
        return shlex.split(self.helper)


_privsep_ready = set()


def init_privsep(rootwrap_config):
    """Tell oslo.privsep how to start os-brick's root daemon (once)."""
    if rootwrap_config in _privsep_ready:
        return
    from oslo_privsep import priv_context
    priv_context.init(root_helper=shlex.split(root_helper(rootwrap_config)))
    _privsep_ready.add(rootwrap_config)
