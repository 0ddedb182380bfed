# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Cinder volume driver for the all-in-one test cloud: files + loop devices.

Each volume is a sparse file ``<loop_data_dir>/volume-<id>``; snapshots are
sparse copies ``snapshot-<id>`` beside them.  A volume is exposed as a loop
device bound when a connection is initialised and returned as
``{'driver_volume_type': 'local', 'data': {'device_path': '/dev/loopN'}}``
(os-brick's LOCAL connector).

Each connector host gets a loop device of its own, the way a real backend
gives each host its own path to the LUN: the device is bound to a hard link
``<loop_data_dir>/hosts/<host>/volume-<id>`` of the volume file (same inode,
same bytes), so ``losetup`` itself says which host a device belongs to and
nothing is lost when cinder-volume restarts.  Connections from one host
share its device (glance and nova on one host); it is detached, and the link
removed, when that host's last connection is terminated, so a detach on one
host never pulls the device from under another.  Every device of a volume is
resized on extend and detached before the file is deleted.

For tests only: cinder-volume runs as root here, so losetup/cp are run
directly, without rootwrap.  Enable with (in the backend section)::

    volume_driver = cinder_loop.driver.LoopDriver
    loop_data_dir = /opt/gcs-aio/data/cinder/loop
"""

import collections
import os
import shutil

from oslo_concurrency import lockutils
from oslo_concurrency import processutils
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import units

from cinder.volume import configuration
from cinder.volume import driver

LOG = logging.getLogger(__name__)

loop_opts = [
    cfg.StrOpt('loop_data_dir', default='$state_path/loop-volumes',
               help='Folder holding the sparse files backing the volumes.'),
    cfg.BoolOpt('loop_direct_io', default=True,
                help='Bind loop devices with --direct-io=on (no double '
                     'page cache).'),
]
cfg.CONF.register_opts(loop_opts, group=configuration.SHARED_CONF_GROUP)


def _run(*cmd):
    return processutils.execute(*cmd)[0].strip()


class LoopDriver(driver.VolumeDriver):
    """Sparse files exposed through loop devices (LOCAL connector)."""

    VERSION = '1.0.0'
    CI_WIKI_NAME = 'none'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(loop_opts)
        self.backend_name = (
            self.configuration.safe_get('volume_backend_name') or 'loop')
        self.data_dir = None
        # (volume id, host) -> live connections on that host's loop device
        self._refs = collections.Counter()

    @staticmethod
    def get_driver_options():
        return loop_opts

    # -- set-up -------------------------------------------------------------

    def do_setup(self, context):
        self.data_dir = os.path.abspath(self.configuration.loop_data_dir)
        os.makedirs(self.data_dir, exist_ok=True)

    def check_for_setup_error(self):
        if not shutil.which('losetup'):
            raise RuntimeError('losetup not found')
        if not os.access(self.data_dir, os.W_OK):
            raise RuntimeError('%s is not writable' % self.data_dir)

    # -- files and loop devices ---------------------------------------------

    def local_path(self, volume):
        return os.path.join(self.data_dir, volume.name)

    def _snap_path(self, snapshot):
        return os.path.join(self.data_dir, snapshot.name)

    def _host_path(self, volume, host):
        """The hard link of the volume file that ``host``'s device uses."""
        safe = (host or 'unknown').replace('/', '_').lstrip('.') or 'unknown'
        return os.path.join(self.data_dir, 'hosts', safe, volume.name)

    @staticmethod
    def _bound(path):
        """(device, backing file) of every loop device on ``path``'s inode."""
        out = _run('losetup', '--list', '--noheadings', '--output',
                   'NAME,BACK-FILE', '--associated', path)
        return [tuple(line.split(None, 1)) for line in out.splitlines()
                if line.strip()]

    def _devices(self, path):
        """Loop devices of the volume file, whichever host's link they use."""
        return [dev for dev, _ in self._bound(path)]

    def _detach(self, dev, backing):
        LOG.info('Detaching %s from %s', dev, backing)
        _run('losetup', '--detach', dev)

    def _detach_all(self, volume):
        path = self.local_path(volume)
        for dev, backing in self._bound(path):
            self._detach(dev, backing)
        hosts = os.path.join(self.data_dir, 'hosts')
        for host in os.listdir(hosts) if os.path.isdir(hosts) else ():
            self._unlink(os.path.join(hosts, host, volume.name))

    @staticmethod
    def _unlink(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    @staticmethod
    def _copy(src, dst, size_gb):
        _run('cp', '--sparse=always', '--reflink=auto', src, dst)
        if os.path.getsize(dst) < size_gb * units.Gi:
            os.truncate(dst, size_gb * units.Gi)

    # -- volumes and snapshots ----------------------------------------------

    def create_volume(self, volume):
        path = self.local_path(volume)
        with open(path, 'xb'):
            pass
        os.truncate(path, volume.size * units.Gi)

    def delete_volume(self, volume):
        path = self.local_path(volume)
        with lockutils.lock('loop-%s' % volume.id):
            for key in [k for k in self._refs if k[0] == volume.id]:
                del self._refs[key]
            if os.path.exists(path):
                self._detach_all(volume)
                os.unlink(path)

    def extend_volume(self, volume, new_size):
        """Grow the file; online too: every host's device sees the size."""
        path = self.local_path(volume)
        with lockutils.lock('loop-%s' % volume.id):
            os.truncate(path, new_size * units.Gi)
            for dev in self._devices(path):
                _run('losetup', '--set-capacity', dev)

    def create_cloned_volume(self, volume, src_vref):
        self._copy(self.local_path(src_vref), self.local_path(volume),
                   volume.size)

    def create_snapshot(self, snapshot):
        self._copy(self.local_path(snapshot.volume), self._snap_path(snapshot),
                   snapshot.volume_size)

    def delete_snapshot(self, snapshot):
        path = self._snap_path(snapshot)
        if os.path.exists(path):
            os.unlink(path)

    def create_volume_from_snapshot(self, volume, snapshot):
        self._copy(self._snap_path(snapshot), self.local_path(volume),
                   volume.size)

    def revert_to_snapshot(self, context, volume, snapshot):
        path = self.local_path(volume)
        self._copy(self._snap_path(snapshot), path + '.revert', volume.size)
        os.replace(path + '.revert', path)

    # -- exports and connections --------------------------------------------

    def ensure_export(self, context, volume):
        pass

    def create_export(self, context, volume, connector):
        pass

    def remove_export(self, context, volume):
        pass

    @staticmethod
    def _host(connector):
        return (connector or {}).get('host') or 'unknown'

    def _host_connections(self, volume, host):
        """Connections of ``host`` per Cinder's attachment records.

        Only used when this process has no count (cinder-volume restarted
        while devices stayed bound).
        """
        return sum(1 for a in volume.volume_attachment or ()
                   if a.connector and self._host(a.connector) == host)

    def initialize_connection(self, volume, connector, **kwargs):
        """This host's loop device on the volume (bound on first use)."""
        host = self._host(connector)
        link = self._host_path(volume, host)
        with lockutils.lock('loop-%s' % volume.id):
            device = next((dev for dev, backing in
                           self._bound(self.local_path(volume))
                           if backing == link), None)
            if device is None:
                os.makedirs(os.path.dirname(link), exist_ok=True)
                self._unlink(link)
                os.link(self.local_path(volume), link)
                cmd = ['losetup', '--find', '--show']
                if self.configuration.loop_direct_io:
                    cmd.append('--direct-io=on')
                device = _run(*cmd, link)
            elif (volume.id, host) not in self._refs:
                self._refs[volume.id, host] = self._host_connections(
                    volume, host)
            self._refs[volume.id, host] += 1
            LOG.info('Volume %s on %s for host %s (%d connection(s))',
                     volume.id, device, host, self._refs[volume.id, host])
        return {'driver_volume_type': 'local',
                'data': {'device_path': device}}

    def terminate_connection(self, volume, connector, **kwargs):
        """Detach the host's loop device when its last connection goes.

        Other hosts' devices stay.  Returns True (shared connection) while
        other connections of the same host remain.
        """
        host = self._host(connector)
        link = self._host_path(volume, host)
        key = (volume.id, host)
        with lockutils.lock('loop-%s' % volume.id):
            if key not in self._refs:
                self._refs[key] = self._host_connections(volume, host)
            self._refs[key] -= 1
            if self._refs[key] > 0:
                return True
            self._refs.pop(key, None)
            path = self.local_path(volume)
            if os.path.exists(path):
                for dev, backing in self._bound(path):
                    if backing == link:
                        self._detach(dev, backing)
            self._unlink(link)
        return False

    # -- stats ----------------------------------------------------------------

    def _update_volume_stats(self):
        fs = os.statvfs(self.data_dir)
        provisioned = sum(
            os.path.getsize(os.path.join(self.data_dir, name))
            for name in os.listdir(self.data_dir)
            if name.startswith('volume-'))
        self._stats = {
            'volume_backend_name': self.backend_name,
            'vendor_name': 'Open Source',
            'driver_version': self.VERSION,
            'storage_protocol': 'local',
            'total_capacity_gb': fs.f_blocks * fs.f_frsize // units.Gi,
            'free_capacity_gb': fs.f_bavail * fs.f_frsize // units.Gi,
            'provisioned_capacity_gb': provisioned // units.Gi,
            'reserved_percentage': 0,
            'max_over_subscription_ratio':
                self.configuration.max_over_subscription_ratio,
            'thin_provisioning_support': True,
            'thick_provisioning_support': False,
            'multiattach': True,
            'online_extend_support': True,
            'shared_targets': False,
            'sparse_copy_volume': True,
            'QoS_support': False,
        }
