"""Protocol specialisations at the os-brick boundary.

``for_connection(info, ...)`` picks the class for a Cinder connection's
``driver_volume_type``; most protocols need nothing beyond ``base``.
"""

from glance_cinder_store.connectors import base
from glance_cinder_store.connectors import nfs
from glance_cinder_store.connectors import rbd

_BY_PROTOCOL = {
    'local': base.LocalConnection,
    'nvmeof': base.NvmeConnection,
    'nfs': nfs.NfsConnection,
    'rbd': rbd.RbdConnection,
}


def for_connection(connection_info, **kwargs):
    protocol = connection_info['driver_volume_type'].lower()
    cls = _BY_PROTOCOL.get(protocol, base.Connection)
    return cls(connection_info, **kwargs)
