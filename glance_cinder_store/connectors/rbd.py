"""RBD: without a local attach os-brick hands back a librbd handle.

A handle is a live librados connection: it cannot go into the host record
(JSON) or be shared with another process.  So the record keeps only the
connection properties, and each process opens its own handle from them
the first time one of its holders needs the volume, and closes it when its
last holder lets go.  Threads of a process share that handle; each holder
reads and writes through its own ``ImageFile`` (own offset, librbd's
positional calls), so they never race on an offset.

Cinder does not send the key (OSSN-0085): os-brick reads
``/etc/ceph/<cluster>.client.<user>.keyring`` and copies it into a
temporary ceph.conf.  librados has read that file once connected, so we
delete it at once instead of leaving a key in /tmp while the handle lives.
"""

import io
import logging
import os
import threading

from glance_store import exceptions
from oslo_utils import fileutils

from glance_cinder_store.connectors import base

LOG = logging.getLogger(__name__)

#: (cluster, pool/image) -> _Open; this process's handles
_open = {}
_open_lock = threading.Lock()
# A forked child must not use (or close) its parent's librados connections.
os.register_at_fork(after_in_child=_open.clear)


class _Open:
    """One os-brick handle and how many holders of this process use it."""

    def __init__(self, wrapper):
        self.wrapper = wrapper
        self.users = 0


class ImageFile:
    """A holder's file-like view of an RBD image.

    Unlike os-brick's wrapper, ``seek`` and ``write`` return what a file
    returns, and ``write_zeroes`` lets the transfer engine zero a range
    without sending the zeros.
    """

    def __init__(self, image):
        self._image = image
        self._offset = 0

    def size(self):
        return self._image.size()

    def seekable(self):
        return True

    def seek(self, offset, whence=os.SEEK_SET):
        if whence == os.SEEK_CUR:
            offset += self._offset
        elif whence == os.SEEK_END:
            offset += self.size()
        elif whence != os.SEEK_SET:
            raise ValueError('bad whence %r' % whence)
        if offset < 0:
            raise ValueError('negative seek position %d' % offset)
        self._offset = offset
        return offset

    def tell(self):
        return self._offset

    def read(self, length=-1):
        end = self.size()
        if length is None or length < 0:
            length = end - self._offset
        length = max(0, min(length, end - self._offset))
        if not length:
            return b''
        data = self._image.read(self._offset, length)
        self._offset += len(data)
        return data

    def write(self, data):
        data = bytes(data)      # librbd takes bytes only
        self._image.write(data, self._offset)
        self._offset += len(data)
        return len(data)

    def write_zeroes(self, offset, length):
        """Make a range read back as zeros (cheap where nothing was written).

        Unlike ``discard``, guaranteed to zero partial objects too.
        """
        self._image.write_zeroes(offset, length)

    def flush(self):
        self._image.flush()

    def fileno(self):
        raise io.UnsupportedOperation('an RBD image has no file descriptor')


class RbdConnection(base.Connection):
    """An RBD volume: a /dev/rbdN device, or librbd handles per process."""

    @property
    def local_path(self):
        return bool(self.properties.get('do_local_attach'))

    @property
    def _key(self):
        props = self.properties
        return (props.get('cluster_name', 'ceph'), props.get('name'))

    def connect(self):
        if self.local_path:
            return super().connect()
        self.check()
        # Open the handle now, while a failure still undoes the attach; the
        # first holder of this process then finds it ready.
        with _open_lock:
            if self._key not in _open:
                _open[self._key] = _Open(self._open_handle())
        # Nothing in here is process-specific: it goes into the record.
        return {'path': None, 'rbd': self.properties.get('name')}

    def _open_handle(self):
        try:
            wrapper = self.brick.connect_volume(self.properties)['path']
        except Exception as e:
            raise exceptions.BackendException(
                'cannot open RBD image %s as client.%s: %s (the glance host '
                'needs python3-rbd, a ceph.conf and /etc/ceph/%s.client.%s.'
                'keyring readable by glance-api)' % (
                    self.properties.get('name'),
                    self.properties.get('auth_username'), e,
                    self._key[0], self.properties.get('auth_username')))
        fileutils.delete_if_exists(wrapper.rbd_conf)    # it holds the key
        return wrapper

    def open_target(self, device_info, writable):
        if self.local_path:
            return super().open_target(device_info, writable)
        with _open_lock:
            entry = _open.get(self._key)
            if entry is None:
                entry = _open[self._key] = _Open(self._open_handle())
            entry.users += 1
        return ImageFile(entry.wrapper.rbd_image)

    def close_target(self, target):
        if self.local_path:
            return
        with _open_lock:
            entry = _open.get(self._key)
            if entry is None:
                return
            entry.users -= 1
            if entry.users > 0:
                return
            del _open[self._key]
        self._close(entry.wrapper)

    def disconnect(self, device_info):
        if self.local_path:
            return super().disconnect(device_info)
        # Other processes' handles are theirs to close (or died with them);
        # close ours if no holder of this process uses it.
        with _open_lock:
            entry = _open.get(self._key)
            if entry is None or entry.users > 0:
                return
            del _open[self._key]
        self._close(entry.wrapper)

    def _close(self, wrapper):
        """os-brick's disconnect: closes the image and librados, drops conf.

        Never raises: the transfer is over, and a handle that cannot be
        closed goes with the process anyway.
        """
        try:
            self.brick.disconnect_volume(self.properties, {'path': wrapper},
                                         force=True)
        except Exception:
            LOG.exception('RBD image %s: closing the handle failed',
                          self.properties.get('name'))
