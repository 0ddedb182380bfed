"""A fake Cinder and os-brick, at exactly the boundary the store uses.

Volumes are sparse files in a temporary folder; "connecting" one gives its
path, so the real attach, transfer and store code runs unchanged on top.
"""

import itertools
import os
import uuid

from glance_store import exceptions
from oslo_utils import units

from glance_cinder_store.connectors import base as connector_base


class FakeVolume:
    def __init__(self, vid, size, name, metadata, volume_type, path):
        self.id = vid
        self.size = size
        self.name = name
        self.metadata = dict(metadata or {})
        self.volume_type = volume_type
        self.status = 'creating'
        self.attachments = []
        self.readonly = False
        self.path = path
        self.encrypted = False
        self.multiattach = False

    def snapshot(self):
        copy = FakeVolume.__new__(FakeVolume)
        copy.__dict__.update(self.__dict__)
        copy.metadata = dict(self.metadata)
        copy.attachments = [dict(a) for a in self.attachments]
        return copy


class FakeAttachment:
    def __init__(self, aid, connection_info, attach_mode, status=None):
        self.id = aid
        self.connection_info = connection_info
        self.attach_mode = attach_mode
        self.status = status


class FakeVolumes:
    """Stands in for glance_cinder_store.cinder.Volumes."""

    HOST = None

    def __init__(self, tmpdir, host):
        self.dir = tmpdir
        self.host = host
        self.volumes = {}
        self.attachments = {}      # id -> (volume_id, mode, host)
        self.attach_status = {}    # id -> reserved/attaching/attached
        self.mountpoints = {}
        self.calls = []
        self.fail = {}             # method name -> exception to raise
        self.status_after_create = 'available'
        self.multiattach = False   # of the volumes created from now on
        self.status_after_extend = None
        self.types = {'gold-type', 'silver-type', None}
        self.default_type = '__DEFAULT__'
        self._ids = itertools.count()

    def _call(self, name, *args):
        self.calls.append((name,) + args)
        if name in self.fail:
            raise self.fail[name]

    # volumes
    def create(self, size_gb, name, metadata, volume_type):
        self._call('create', size_gb, name)
        if volume_type not in self.types:
            raise exceptions.NotFound('Volume type with name %s could not '
                                      'be found' % volume_type)
        vid = str(uuid.uuid4())
        path = os.path.join(self.dir, 'volume-' + vid)
        with open(path, 'wb') as f:
            f.truncate(size_gb * units.Gi)
        # Cinder gives an untyped volume its default type
        vol = FakeVolume(vid, size_gb, name, metadata,
                         volume_type or self.default_type, path)
        vol.multiattach = self.multiattach
        self.volumes[vid] = vol
        return vol.snapshot()

    def volume_type(self, name):
        self._call('volume_type', name)
        if name not in self.types:
            raise exceptions.NotFound('volume type %s: not found' % name)
        return type('VolumeType', (), {'name': name, 'extra_specs': {}})

    def default_volume_type(self):
        self._call('default_volume_type')
        return type('VolumeType', (), {'name': self.default_type,
                                       'extra_specs': {}})

    def _vol(self, volume_id):
        try:
            return self.volumes[volume_id]
        except KeyError:
            raise exceptions.NotFound('volume %s: not found' % volume_id)

    def get(self, volume_id):
        self._call('get', volume_id)
        vol = self._vol(volume_id)
        if vol.status == 'creating':
            vol.status = self.status_after_create
        if vol.status == 'extending':
            vol.status = self.status_after_extend or (
                'in-use' if vol.attachments else 'available')
        return vol.snapshot()

    def wait_for(self, volume, wanted, transitional, timeout=None):
        self._call('wait_for', volume.id, wanted)
        vol = self.get(volume.id)
        if vol.status != wanted:
            from glance_cinder_store import cinder
            raise cinder.VolumeFailed('volume %s is %s, expected %s'
                                      % (vol.id, vol.status, wanted))
        return vol

    def extend(self, volume, new_size_gb):
        self._call('extend', volume.id, new_size_gb)
        vol = self._vol(volume.id)
        if vol.status not in ('available', 'in-use'):
            raise exceptions.BackendException(
                "Invalid volume: Volume status must be '{'status': "
                "'available'}' to extend, currently %s" % vol.status)
        vol.size = new_size_gb
        with open(vol.path, 'r+b') as f:
            f.truncate(new_size_gb * units.Gi)
        vol.status = 'extending'

    def delete(self, volume_id):
        self._call('delete', volume_id)
        vol = self._vol(volume_id)
        if self._attachments_of(volume_id):
            raise exceptions.BackendException(
                'Invalid volume: Volume status must be available or error')
        os.unlink(vol.path)
        del self.volumes[volume_id]

    def rename(self, volume, name, metadata):
        self._call('rename', volume.id, name)
        vol = self._vol(volume.id)
        vol.name = name
        vol.metadata = dict(metadata)
        return vol.snapshot()

    def replace_metadata(self, volume, metadata):
        self._call('replace_metadata', volume.id)
        self._vol(volume.id).metadata = dict(metadata)

    def set_metadata(self, volume, metadata):
        self._call('set_metadata', volume.id)
        self._vol(volume.id).metadata.update(metadata)

    def set_readonly(self, volume):
        self._call('set_readonly', volume.id)
        self._vol(volume.id).readonly = True

    # attachments
    def attachment_create(self, volume_id, mode, connector=None):
        self._call('attachment_create', volume_id, mode)
        vol = self._vol(volume_id)
        aid = 'att-%d' % next(self._ids)
        # Like Cinder: the volume's view lists an attachment only once it
        # is complete ('attached'); until then only the attachments API has
        self.attachments[aid] = (volume_id, mode, None)
        self.attach_status[aid] = 'reserved'
        vol.status = 'reserved'
        if connector is None:
            return {'id': aid}
        # Cinder connects it at once (no attachment_update needed)
        self._connect(aid, connector)
        return {'id': aid, 'connection_info': self.connection_info(volume_id)}

    def _connect(self, attachment_id, connector):
        volume_id, mode, _ = self.attachments[attachment_id]
        self.attachments[attachment_id] = (volume_id, mode, connector['host'])
        self.mountpoints[attachment_id] = connector.get('mountpoint')
        self.attach_status[attachment_id] = 'attaching'
        self._vol(volume_id).status = 'attaching'

    def request_release(self, volume_id):
        from glance_cinder_store import cinder
        self._call('request_release', volume_id)
        self._vol(volume_id).metadata[cinder.RELEASE_MARK] = 'wanted'
        return True

    service_key = None          # the store's own credentials set one
    refuse_filter = False       # a Cinder without the metadata filter

    def marked_for_release(self):
        from glance_cinder_store import cinder
        self._call('marked_for_release')
        if self.refuse_filter:
            return None
        return {v.id for v in self.volumes.values()
                if cinder.RELEASE_MARK in v.metadata}

    def release_requested(self, volume_ids, each=True):
        from glance_cinder_store import cinder
        self._call('release_requested', tuple(volume_ids))
        return [v for v in volume_ids if v not in self.volumes or
                cinder.RELEASE_MARK in self.volumes[v].metadata]

    def attachment_update(self, attachment_id, connector):
        self._call('attachment_update', attachment_id)
        self._connect(attachment_id, connector)
        volume_id, mode, _ = self.attachments[attachment_id]
        return FakeAttachment(attachment_id, self.connection_info(volume_id),
                              mode)

    def connection_info(self, volume_id):
        return {'driver_volume_type': 'local',
                'device_path': self._vol(volume_id).path}

    def attachment_complete(self, attachment_id):
        self._call('attachment_complete', attachment_id)
        volume_id, _, host = self.attachments[attachment_id]
        self.attach_status[attachment_id] = 'attached'
        vol = self._vol(volume_id)
        vol.status = 'in-use'
        vol.attachments.append({
            'attachment_id': attachment_id, 'host_name': host,
            'device': self.mountpoints.get(attachment_id)})

    def attachment_delete(self, attachment_id):
        self._call('attachment_delete', attachment_id)
        if attachment_id not in self.attachments:
            return
        volume_id = self.attachments.pop(attachment_id)[0]
        self.attach_status.pop(attachment_id, None)
        vol = self.volumes.get(volume_id)
        if vol:
            vol.attachments = [a for a in vol.attachments
                               if a['attachment_id'] != attachment_id]
            if vol.attachments:
                vol.status = 'in-use'
            elif self._attachments_of(volume_id):
                vol.status = 'reserved'
            else:
                vol.status = 'available'

    def _attachments_of(self, volume_id):
        return [aid for aid, (vid, _, _) in self.attachments.items()
                if vid == volume_id]

    def volume_attachments(self, volume_id):
        self._call('volume_attachments', volume_id)
        return [FakeAttachment(aid, None, self.attachments[aid][1],
                               self.attach_status[aid])
                for aid in self._attachments_of(volume_id)]

    def host_attachments(self, volume_id, host):
        self._call('host_attachments', volume_id)
        return [a['attachment_id'] for a in self._vol(volume_id).attachments
                if a.get('host_name') == host]

    def attachment_show(self, attachment_id):
        volume_id, mode, _ = self.attachments[attachment_id]
        connected = self.attach_status[attachment_id] != 'reserved'
        return FakeAttachment(
            attachment_id,
            self.connection_info(volume_id) if connected else None, mode,
            self.attach_status[attachment_id])


class FakeConnection:
    """Stands in for connectors.base.Connection (the os-brick side)."""

    local_path = True
    connected = {}          # path -> number of connects not undone
    fail_connect = None

    def __init__(self, connection_info, **kwargs):
        self.connection_info = connection_info
        self.properties = connection_info
        self.brick = self

    def get_volume_paths(self, props):
        return [props['device_path']]

    def connect(self):
        if FakeConnection.fail_connect:
            raise FakeConnection.fail_connect
        path = self.properties['device_path']
        FakeConnection.connected[path] = (
            FakeConnection.connected.get(path, 0) + 1)
        return {'type': 'local', 'path': path}

    def disconnect(self, device_info):
        # Like os-brick with force=True: undoing a half-made or absent
        # connection is not an error.
        path = self.properties['device_path']
        if path in FakeConnection.connected:
            FakeConnection.connected[path] -= 1
            if not FakeConnection.connected[path]:
                del FakeConnection.connected[path]

    def extend(self):
        return os.path.getsize(self.properties['device_path'])

    def open_target(self, device_info, writable):
        return device_info['path']

    def close_target(self, target):
        pass

    # the real identity checks, on the fake volume files
    identity = connector_base.Connection.identity
    check_identity = connector_base.Connection.check_identity

    def claims(self, real_path):
        return {}

    def mismatch(self, identity, volume_id):
        return None
