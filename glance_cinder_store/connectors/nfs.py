"""NFS: a file on a share os-brick mounts under ``cinder_mount_point_base``."""

from glance_store import exceptions

from glance_cinder_store.connectors import base


class NfsConnection(base.Connection):
    """Only raw files: a qcow2 volume file is not the image's bytes."""

    def _factory_kwargs(self, mount_point_base):
        return {'nfs_mount_point_base': mount_point_base}

    def check(self):
        super().check()
        fmt = self.properties.get('format', 'raw')
        if fmt != 'raw':
            raise exceptions.BackendException(
                'NFS volume file has format %r; only raw volumes can hold '
                'images (set nfs_qcow2_volumes = False in cinder.conf)' % fmt)
