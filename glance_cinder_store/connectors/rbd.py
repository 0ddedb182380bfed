"""RBD: without a local attach os-brick hands back a librbd file handle."""

from glance_cinder_store.connectors import base


class RbdConnection(base.Connection):

    @property
    def local_path(self):
        return bool(self.properties.get('do_local_attach'))

    def open_target(self, device_info, writable):
        # With do_local_attach the path is a /dev/rbdN device; otherwise
        # os-brick gives an RBDVolumeIOWrapper we read and write directly.
        return device_info['path']
