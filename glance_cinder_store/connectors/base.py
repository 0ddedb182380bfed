"""One attached volume as os-brick sees it: connect, extend, disconnect."""

import contextlib
import logging
import os
import stat
import uuid as uuid_lib

from glance_store import exceptions
import os_brick
from os_brick.initiator import connector as brick_connector
from os_brick.initiator import utils as brick_utils
from oslo_config import cfg

LOG = logging.getLogger(__name__)


def host_connector(root_helper, my_ip, host, use_multipath, enforce_multipath):
    """The connector properties Cinder needs to export a volume to us."""
    return brick_connector.get_connector_properties(
        root_helper, my_ip, use_multipath, enforce_multipath, host=host)


class Connection:
    """A block device reached through an os-brick connector.

    Subclasses override what differs per protocol; ``device_info`` is what
    os-brick's ``connect_volume`` returned and is kept in the host record so
    another process can disconnect it after a crash.
    """

    #: True when connect gives a path we open ourselves (a device or file).
    local_path = True

    def __init__(self, connection_info, root_helper, use_multipath=False,
                 mount_point_base=None, volume=None):
        self.connection_info = connection_info
        self.protocol = connection_info['driver_volume_type']
        self.volume = volume
        self.brick = brick_connector.InitiatorConnector.factory(
            self.protocol, root_helper, use_multipath=use_multipath,
            conn=connection_info, **self._factory_kwargs(mount_point_base))

    def _factory_kwargs(self, mount_point_base):
        return {}

    @property
    def properties(self):
        # Cinder's attachments API returns the driver's connection data
        # flattened, with driver_volume_type beside it; the older
        # initialize_connection form nests it under 'data'.
        return self.connection_info.get('data', self.connection_info)

    def check(self):
        """Refuse volumes this store cannot read or write byte for byte."""
        if self.volume is not None and getattr(self.volume, 'encrypted',
                                               False):
            raise exceptions.BackendException(
                'volume %s is encrypted: image volumes must not be'
                % self.volume.id)

    def connect(self):
        self.check()
        return self.brick.connect_volume(self.properties)

    def disconnect(self, device_info):
        self.brick.disconnect_volume(self.properties, device_info or {},
                                     force=True)

    def extend(self):
        """Make the host see a volume Cinder has grown; returns new size."""
        return self.brick.extend_volume(self.properties)

    def open_target(self, device_info, writable):
        """A path to open, or a file-like object for handle-only protocols."""
        return device_info['path']

    def close_target(self, target):
        """Let go of what ``open_target`` returned (handles need closing)."""

    # -- device identity: is what we open the volume? ----------------------

    def identity(self, device_info):
        """What names the connected device now: recorded at connect time.

        The device number (a block device's st_rdev, a file's st_dev and
        inode) plus whatever the protocol offers (``claims``).  Empty for
        handle-only connections.
        """
        path = (device_info or {}).get('path')
        if not isinstance(path, str):
            return {}
        st = os.stat(path)
        if stat.S_ISBLK(st.st_mode):
            found = {'rdev': st.st_rdev}
        else:
            found = {'dev': st.st_dev, 'ino': st.st_ino}
        found.update(self.claims(os.path.realpath(path)))
        return found

    def claims(self, real_path):
        """Protocol identity of the device (serial, uuid, backing file)."""
        name = os.path.basename(real_path)
        wwid = _read_sys('/sys/block/%s/device/wwid' % name) or _read_sys(
            '/sys/block/%s/wwid' % name)
        return {'wwid': wwid} if wwid else {}

    def check_identity(self, device_info, recorded, volume_id):
        """Refuse a device that is not (or no longer) ``volume_id``'s.

        Size alone passes almost any wrong LUN: compare the device number
        and serial recorded at connect time, and what the protocol says the
        device belongs to.
        """
        now = self.identity(device_info)
        changed = sorted(k for k, v in (recorded or {}).items()
                         if now.get(k) != v)
        if changed:
            raise exceptions.BackendException(
                'volume %s: device %s is no longer the one connected for it '
                '(%s changed): refusing to use it' % (
                    volume_id, device_info.get('path'), ', '.join(changed)))
        problem = self.mismatch(now, volume_id)
        if problem:
            raise exceptions.BackendException(
                'volume %s: device %s is not this volume (%s): refusing to '
                'use it' % (volume_id, device_info.get('path'), problem))
        return now

    def mismatch(self, identity, volume_id):
        """Why ``identity`` is not ``volume_id``'s device, if we can tell."""
        return None


def _read_sys(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


class NvmeConnection(Connection):
    """NVMe-oF: the namespace's uuid and nguid are the ones Cinder named.

    Cinder's drivers write them with or without hyphens, in either case;
    sysfs shows them hyphenated and lower case (os-brick finds the device
    by them, normalised the same way).
    """

    #: sysfs attribute of the namespace -> connection property naming it
    IDS = (('uuid', 'vol_uuid'), ('nguid', 'volume_nguid'))

    def claims(self, real_path):
        found = super().claims(real_path)
        name = os.path.basename(real_path)
        for attribute, _ in self.IDS:
            path = '/sys/block/%s/%s' % (name, attribute)
            value = _as_uuid(_read_sys(path))
            if value:
                found[attribute] = value
        return found

    def mismatch(self, identity, volume_id):
        target = self._target()
        for attribute, prop in self.IDS:
            expected = _as_uuid(target.get(prop))
            found = identity.get(attribute)
            if expected and found and found != expected:
                return 'namespace %s %s, expected %s' % (attribute, found,
                                                         expected)
        return None

    def _target(self):
        """The properties that name the namespace os-brick connected.

        In the replicated form the top-level ``vol_uuid`` is Cinder's
        volume id, not a namespace's: the one replica's properties name
        the device; with several, the device is a RAID of them, which has
        no namespace ids of its own.
        """
        replicas = self.properties.get('volume_replicas')
        if replicas is None:
            return self.properties
        return replicas[0] if len(replicas) == 1 else {}


def _as_uuid(value):
    """``value`` as a hyphenated lower-case uuid; None if it is not one."""
    try:
        return str(uuid_lib.UUID(value.strip()))
    except (AttributeError, TypeError, ValueError):
        return None


class LocalConnection(Connection):
    """A device already on this host; the aio's loop devices name a file."""

    def claims(self, real_path):
        backing = _read_sys('/sys/block/%s/loop/backing_file'
                            % os.path.basename(real_path))
        return {'backing_file': backing} if backing else {}

    def mismatch(self, identity, volume_id):
        backing = identity.get('backing_file')
        if backing and not backing.endswith(volume_id):
            return 'loop device backed by %s' % backing
        return None


_brick_ready = []
_fallback_lock_path = []     # our lock folder, when none is configured


def setup_os_brick(fallback_lock_path):
    """os_brick.setup() once per process, as nova and cinder do.

    It points os-brick's external locks at ``[os_brick] lock_path`` (by
    default ``[oslo_concurrency] lock_path``), shared with nova and cinder
    on this host.  os-brick's connection guard (a volume with shared
    targets, or one Cinder has not said it of yet) locks in
    ``[oslo_concurrency] lock_path`` and fails without one: then our own
    lock folder stands in, so attaching works, with a warning.
    """
    if _brick_ready:
        return
    _brick_ready.append(True)
    if not cfg.CONF.oslo_concurrency.lock_path:
        LOG.warning('[oslo_concurrency] lock_path is not set: os-brick locks '
                    'in %s, not shared with nova or cinder on this host; set '
                    'it to theirs', fallback_lock_path)
        _fallback_lock_path.append(fallback_lock_path)
        _ensure_lock_path()
    try:
        os_brick.setup(cfg.CONF)
    except cfg.Error as e:
        LOG.warning('os_brick.setup: %s', e)


def guard_of(volume):
    """What os-brick's guard_connection needs to know of a volume."""
    shared = getattr(volume, 'shared_targets', False)
    service = (getattr(volume, 'service_uuid', None) or
               getattr(volume, 'os-vol-host-attr:host', None) or
               'glance-cinder-store')
    return {'shared_targets': shared, 'service_uuid': service}


def _ensure_lock_path():
    """Our lock folder as the lock path, if setup found none.

    Again before each guarded call: parsing the configuration anew (a
    SIGHUP reload of glance-api, say) drops every default set in code.
    """
    if _fallback_lock_path and not cfg.CONF.oslo_concurrency.lock_path:
        cfg.CONF.set_default('lock_path', _fallback_lock_path[0],
                             group='oslo_concurrency')


def guarded(guard):
    """Lock connect/disconnect like nova and cinder for shared targets."""
    if not guard:
        return contextlib.nullcontext()
    _ensure_lock_path()
    return brick_utils.guard_connection(guard)
