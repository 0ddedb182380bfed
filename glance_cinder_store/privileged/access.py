"""What the unprivileged side calls: grant and revoke device access."""

import logging
import os

from glance_cinder_store import privileged
from glance_cinder_store.privileged import acl

LOG = logging.getLogger(__name__)


class DeviceAccess:
    """Grant this process's user read (and write) access to a device."""

    def __init__(self, rootwrap_config, uid=None):
        privileged.init(rootwrap_config)
        self.uid = os.getuid() if uid is None else uid

    def needed(self, path, writable):
        mode = os.R_OK | (os.W_OK if writable else 0)
        return not os.access(path, mode)

    def grant(self, path, writable):
        """Return True when an ACL entry was added (and must be revoked)."""
        if self.uid == 0 or not self.needed(path, writable):
            return False
        acl.grant(path, writable)
        return True

    def revoke(self, path):
        try:
            acl.revoke(path)
        except Exception as e:
            # The device may be gone already (disconnected by a crash
            # recovery): nothing is left to revoke then.
            LOG.warning('could not remove access to %s: %s', path, e)
