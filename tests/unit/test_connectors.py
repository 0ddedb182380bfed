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


def assert_passes_to_os_brick(conn, info, device):
    """connect, disconnect and extend go to os-brick's connector as is."""
    assert conn.connect() == {'type': 'block', 'path': '/dev/sdx'}
    conn.brick.connect_volume.assert_called_once_with(info)
    conn.disconnect({'path': device})
    conn.brick.disconnect_volume.assert_called_once_with(
        info, {'path': device}, force=True)
    conn.brick.extend_volume.return_value = 2 * 1024 ** 3
    assert conn.extend() == 2 * 1024 ** 3


def test_iscsi_uses_the_base_connection(factory):
    conn = connection(ISCSI, use_multipath=True)
    assert type(conn) is base.Connection and conn.local_path
    factory.assert_called_once_with('iscsi', mock.ANY, use_multipath=True,
                                    conn=ISCSI)
    assert_passes_to_os_brick(conn, ISCSI, '/dev/sdx')


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


NS_UUID = '9a3c1f0e-5b7d-4c2a-8e61-0f4b2d7c9e13'
NVME = {'driver_volume_type': 'nvmeof', 'target_nqn': 'nqn.2014-08.x:vol',
        'portals': [['10.0.0.2', 4420, 'tcp']],
        # as some drivers write it: no hyphens, upper case
        'vol_uuid': NS_UUID.replace('-', '').upper()}


@pytest.fixture
def sysfs(monkeypatch):
    """/sys/block/<name>/<attribute> values, for the devices of a test."""
    values = {}
    monkeypatch.setattr(base, '_read_sys', values.get)
    return values


def nvme_device(tmp_path, sysfs, uuid=NS_UUID, nguid=None):
    """A file named like the namespace's device, its sysfs ids beside."""
    path = tmp_path / 'nvme0n1'
    path.write_bytes(b'')
    sysfs['/sys/block/nvme0n1/uuid'] = uuid + '\n'
    if nguid:
        sysfs['/sys/block/nvme0n1/nguid'] = nguid
    return {'type': 'block', 'path': str(path)}


def test_nvme_uses_the_nvme_connection(factory):
    conn = connection(NVME)
    assert isinstance(conn, base.NvmeConnection) and conn.local_path
    factory.assert_called_once_with('nvmeof', mock.ANY, use_multipath=False,
                                    conn=NVME)
    assert_passes_to_os_brick(conn, NVME, '/dev/nvme0n1')


def test_nvme_namespace_named_in_another_spelling_is_accepted(
        factory, tmp_path, sysfs):
    conn = connection(NVME)
    device = nvme_device(tmp_path, sysfs)
    recorded = conn.identity(device)
    assert recorded['uuid'] == NS_UUID
    assert conn.check_identity(device, recorded, 'v1') == recorded


def test_nvme_namespace_of_another_volume_is_refused(factory, tmp_path,
                                                     sysfs):
    conn = connection(NVME)
    device = nvme_device(tmp_path, sysfs,
                         uuid='11111111-2222-3333-4444-555555555555')
    with pytest.raises(exceptions.BackendException,
                       match='namespace uuid 11111111-.*expected ' + NS_UUID):
        conn.check_identity(device, {}, 'v1')


def test_nvme_namespace_reused_after_connect_is_refused(factory, tmp_path,
                                                        sysfs):
    conn = connection(dict(NVME, vol_uuid=None))   # found by ns_id, say
    device = nvme_device(tmp_path, sysfs)
    recorded = conn.identity(device)
    sysfs['/sys/block/nvme0n1/uuid'] = '11111111-2222-3333-4444-555555555555'
    with pytest.raises(exceptions.BackendException, match='uuid changed'):
        conn.check_identity(device, recorded, 'v1')


def test_nvme_nguid_is_checked_too(factory, tmp_path, sysfs):
    nguid = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0'
    conn = connection(dict(NVME, vol_uuid=None,
                           volume_nguid=nguid.replace('-', '')))
    device = nvme_device(tmp_path, sysfs, nguid=nguid)
    assert conn.check_identity(device, {}, 'v1')['nguid'] == nguid
    sysfs['/sys/block/nvme0n1/nguid'] = NS_UUID
    with pytest.raises(exceptions.BackendException, match='namespace nguid'):
        conn.check_identity(device, {}, 'v1')


def test_nvme_replicated_form_names_the_namespace_in_its_replica(
        factory, tmp_path, sysfs):
    # top level: Cinder's volume id, not the namespace's uuid
    replica = {'target_nqn': 'nqn.x', 'vol_uuid': NS_UUID,
               'portals': [['10.0.0.2', 4420, 'tcp']]}
    one = {'driver_volume_type': 'nvmeof', 'vol_uuid': 'cinder-volume-id',
           'volume_replicas': [replica], 'replica_count': 1}
    device = nvme_device(tmp_path, sysfs)
    assert connection(one).check_identity(device, {}, 'v1')
    wrong = dict(one, volume_replicas=[dict(replica, vol_uuid='1' * 32)])
    with pytest.raises(exceptions.BackendException, match='namespace uuid'):
        connection(wrong).check_identity(device, {}, 'v1')
    # several replicas: os-brick hands over a RAID of them, no namespace
    raid = dict(one, volume_replicas=[dict(replica, vol_uuid='1' * 32),
                                      replica], replica_count=2)
    assert connection(raid).check_identity(device, {}, 'v1')


def test_iscsi_device_reused_for_another_lun_is_refused(factory, tmp_path,
                                                        sysfs):
    path = tmp_path / 'sdx'
    path.write_bytes(b'')
    device = {'path': str(path)}
    sysfs['/sys/block/sdx/device/wwid'] = 'naa.600a0b80001'
    conn = connection(ISCSI)
    recorded = conn.identity(device)
    assert recorded['wwid'] == 'naa.600a0b80001'
    sysfs['/sys/block/sdx/device/wwid'] = 'naa.600a0b80002'
    with pytest.raises(exceptions.BackendException, match='wwid changed'):
        conn.check_identity(device, recorded, 'v1')


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
