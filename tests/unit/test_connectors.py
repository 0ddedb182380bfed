"""Protocols this kernel lacks, at the os-brick boundary (mocked)."""

import os
from unittest import mock

from glance_store import exceptions
import pytest

from glance_cinder_store import connectors
from glance_cinder_store.connectors import base
from glance_cinder_store.connectors import nfs
from glance_cinder_store.connectors import rbd


@pytest.fixture
def factory(monkeypatch):
    brick = mock.Mock()
    brick.connect_volume.return_value = {'type': 'block',
                                         'path': '/dev/sdx'}
    make = mock.Mock(return_value=brick)
    monkeypatch.setattr(base.brick_connector.InitiatorConnector, 'factory',
                        make)
    return make


def connection(info, **kw):
    kw.setdefault('root_helper', 'sudo glance-rootwrap /etc/glance/rw.conf')
    return connectors.for_connection(info, **kw)


ISCSI = {'driver_volume_type': 'iscsi', 'target_iqn': 'iqn.x',
         'target_portal': '10.0.0.1:3260', 'target_lun': 1}


def test_iscsi_uses_the_base_connection(factory):
    conn = connection(ISCSI, use_multipath=True)
    assert type(conn) is base.Connection and conn.local_path
    factory.assert_called_once_with('iscsi', mock.ANY, use_multipath=True,
                                    conn=ISCSI)
    assert conn.connect() == {'type': 'block', 'path': '/dev/sdx'}
    conn.brick.connect_volume.assert_called_once_with(ISCSI)
    conn.disconnect({'path': '/dev/sdx'})
    conn.brick.disconnect_volume.assert_called_once_with(
        ISCSI, {'path': '/dev/sdx'}, force=True)
    conn.brick.extend_volume.return_value = 2 * 1024 ** 3
    assert conn.extend() == 2 * 1024 ** 3


def test_nested_connection_info_is_unwrapped(factory):
    nested = {'driver_volume_type': 'fibre_channel',
              'data': {'target_wwn': ['50'], 'target_lun': 3}}
    conn = connection(nested)
    conn.connect()
    conn.brick.connect_volume.assert_called_once_with(nested['data'])


def test_encrypted_volumes_are_refused(factory):
    volume = mock.Mock(id='v1', encrypted=True)
    with pytest.raises(exceptions.BackendException, match='encrypted'):
        connection(ISCSI, volume=volume).connect()


NFS = {'driver_volume_type': 'nfs', 'export': 'srv:/vols',
       'name': 'volume-1', 'options': None, 'format': 'raw'}


def test_nfs_mounts_under_the_configured_base(factory):
    conn = connection(NFS, mount_point_base='/var/lib/glance/mnt')
    assert isinstance(conn, nfs.NfsConnection)
    assert factory.call_args.kwargs['nfs_mount_point_base'] == (
        '/var/lib/glance/mnt')
    conn.brick.connect_volume.return_value = {
        'path': '/var/lib/glance/mnt/abc/volume-1'}
    assert conn.connect()['path'].endswith('volume-1')


def test_nfs_qcow2_volumes_are_refused(factory):
    conn = connection(dict(NFS, format='qcow2'))
    with pytest.raises(exceptions.BackendException, match='qcow2'):
        conn.connect()
    conn.brick.connect_volume.assert_not_called()


def test_rbd_with_local_attach_is_a_device(factory):
    info = {'driver_volume_type': 'rbd', 'name': 'volumes/volume-1',
            'do_local_attach': True}
    conn = connection(info)
    assert isinstance(conn, rbd.RbdConnection) and conn.local_path
    assert conn.connect() == {'type': 'block', 'path': '/dev/sdx'}
    assert conn.open_target({'path': '/dev/rbd0'}, writable=False) == (
        '/dev/rbd0')


def test_without_a_lock_path_os_brick_locks_in_our_folder(tmp_path,
                                                          monkeypatch):
    """os-brick's guard needs [oslo_concurrency] lock_path; none set."""
    from oslo_config import cfg
    monkeypatch.setattr(base, '_brick_ready', [])
    monkeypatch.setattr(base, '_fallback_lock_path', [])
    before = cfg.CONF.oslo_concurrency.lock_path   # a default, in tests
    cfg.CONF.set_default('lock_path', None, group='oslo_concurrency')
    try:
        base.setup_os_brick(str(tmp_path))
        # Cinder has not said whether the targets are shared: lock
        with base.guarded({'shared_targets': None, 'service_uuid': 'svc'}):
            pass
        assert os.listdir(tmp_path) == ['os-brick-svc']
        # the configuration parsed anew (a SIGHUP reload): defaults gone
        cfg.CONF.set_default('lock_path', None, group='oslo_concurrency')
        with base.guarded({'shared_targets': None, 'service_uuid': 'v2'}):
            pass
        assert sorted(os.listdir(tmp_path)) == ['os-brick-svc', 'os-brick-v2']
    finally:
        cfg.CONF.set_default('lock_path', before, group='oslo_concurrency')


def test_a_configured_lock_path_is_left_alone(tmp_path, monkeypatch):
    from oslo_config import cfg
    monkeypatch.setattr(base, '_brick_ready', [])
    monkeypatch.setattr(base, '_fallback_lock_path', [])
    cfg.CONF.set_override('lock_path', str(tmp_path / 'theirs'),
                          group='oslo_concurrency')
    try:
        base.setup_os_brick(str(tmp_path / 'ours'))
        assert cfg.CONF.oslo_concurrency.lock_path == str(tmp_path / 'theirs')
    finally:
        cfg.CONF.clear_override('lock_path', group='oslo_concurrency')
