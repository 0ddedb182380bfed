"""The operator tools' decisions, on fake Cinder data."""

import os

import pytest

from glance_cinder_store import attach
from glance_cinder_store.cmd import cleanup
from glance_cinder_store import holders
from tests.unit import test_heal


def test_cleanup_refuses_root(monkeypatch, capsys):
    monkeypatch.setattr(os, 'geteuid', lambda: 0)
    assert cleanup.main([]) == 2
    assert 'must not run as root' in capsys.readouterr().err


@pytest.mark.parametrize('dry_run', [True, False])
def test_untracked_attachment_disconnected_then_deleted(
        store, cinder, dry_run):
    vol = cinder.get(cinder.create(1, 'image-u', {}, 'gold-type').id)
    host = store.attachments
    with host.attach(cinder, vol, 'ro'):
        att = host.records.load(vol.id).attachment_id
        host.records.remove(vol.id)            # the record is lost
    # the device stays connected: nobody knew of the attachment
    assert att in cinder.attachments
    findings = test_heal.reconcile(store, cinder, dry_run=dry_run,
                                   untracked=True)
    assert [(f.volume_id, f.outcome) for f in findings] == [
        (vol.id, 'would detach' if dry_run else 'detached')]
    if dry_run:
        assert att in cinder.attachments
    else:
        assert cinder.attachments == {}
        assert test_heal.connected() == {}


def test_untracked_attachment_in_use_is_left_alone(store, cinder):
    vol = cinder.get(cinder.create(1, 'image-u', {}, 'gold-type').id)
    host = store.attachments
    with host.attach(cinder, vol, 'ro'):
        host.records.remove(vol.id)
        with open(vol.path, 'rb'):              # a process has it open
            findings = test_heal.reconcile(store, cinder, untracked=True)
        assert [f.outcome for f in findings] == ['held']
        assert len(cinder.attachments) == 1


def test_other_hosts_attachments_are_never_touched(store, cinder):
    vol = cinder.get(cinder.create(1, 'image-u', {}, 'gold-type').id)
    att = cinder.attachment_create(vol.id, 'ro')['id']
    cinder.attachment_update(att, {'host': 'elsewhere',
                                   'mountpoint': attach.MOUNTPOINT})
    assert test_heal.reconcile(store, cinder, untracked=True) == []
    assert att in cinder.attachments


def test_records_never_hold_secrets(tmp_path):
    records = holders.RecordStore(str(tmp_path / 'state'))
    info = {'driver_volume_type': 'iscsi',
            'data': {'auth_password': 'chap', 'auth_username': 'u',
                     'target_iqn': 'iqn'},
            'keyring': 'AQB...'}
    records.save(holders.Record('v1', 'a1', 'rw', connection_info=info))
    text = open(records.path('v1')).read()
    assert 'chap' not in text and 'AQB' not in text and 'iqn' in text
    assert records.load('v1').stripped
    assert os.stat(records.path('v1')).st_mode & 0o777 == 0o600
    assert os.stat(records.dir).st_mode & 0o777 == 0o700
