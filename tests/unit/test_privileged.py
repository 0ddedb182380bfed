"""The privileged ACL code: encoding, rules, and a real device (root)."""

import os
import stat
import subprocess

import pytest

from glance_cinder_store.privileged import acl


@pytest.fixture(autouse=True)
def ledger(tmp_path, monkeypatch):
    path = str(tmp_path / 'run' / 'grants.json')
    monkeypatch.setattr(acl, 'LEDGER', path)
    return path


def test_encode_decode_round_trip():
    entries = acl.with_user(acl.from_mode(0o600), 998, acl.READ)
    assert acl.decode(acl.encode(entries)) == sorted(
        entries, key=lambda e: (e[0], e[2]))
    with pytest.raises(ValueError):
        acl.decode(b'\x01\x00\x00\x00')


def test_grant_adds_user_and_mask_revoke_folds_back():
    base = acl.from_mode(0o640)
    granted = acl.with_user(base, 998, acl.READ | acl.WRITE)
    assert (acl.USER, 6, 998) in granted
    assert (acl.MASK, 6, acl.UNDEFINED_ID) in granted     # rw | r of group
    again = acl.with_user(granted, 998, acl.READ)
    assert [e for e in again if e[0] == acl.USER] == [(acl.USER, 4, 998)]
    assert sorted(acl.without_user(granted, 998)) == sorted(base)


def test_other_users_entries_are_kept():
    two = acl.with_user(acl.with_user(acl.from_mode(0o600), 5, 4), 6, 6)
    one = acl.without_user(two, 6)
    assert (acl.USER, 4, 5) in one and (acl.MASK, 4, acl.UNDEFINED_ID) in one


def test_refuses_root_and_non_devices(tmp_path):
    path = tmp_path / 'f'
    path.write_text('x')
    with pytest.raises(PermissionError):
        acl.set_user_access(str(path), 998, False)
    with pytest.raises(PermissionError):
        acl.set_user_access('/dev/null', 0, False)
    with pytest.raises(PermissionError):
        acl.set_user_access('/dev/../etc/passwd', 998, False)
    with pytest.raises(PermissionError):
        acl.set_user_access('/dev/../etc/passwd', 998, False)
    with pytest.raises(PermissionError):
        acl.set_user_access('/dev/null', 998, False)      # char device


def test_entry_points_run_in_our_privsep_context():
    from glance_cinder_store import privileged
    from oslo_privsep import priv_context
    for name in ('grant', 'revoke', 'ping'):
        # the daemon looks entry points up by module and name
        fn = getattr(acl, name)
        assert getattr(fn, priv_context._ENTRYPOINT_ATTR) is (
            privileged.default)


@pytest.fixture
def loop_device(tmp_path):
    if os.geteuid() != 0 or not os.path.exists('/dev/loop-control'):
        pytest.skip('needs root and loop devices')
    backing = tmp_path / 'backing'
    backing.write_bytes(bytes(1024 * 1024))
    dev = subprocess.run(['losetup', '-f', '--show', str(backing)],
                         capture_output=True, text=True,
                         check=True).stdout.strip()
    yield dev
    subprocess.run(['losetup', '-d', dev], check=True)


def test_real_device_grant_and_revoke(loop_device):
    mode = os.stat(loop_device).st_mode
    acl.set_user_access(loop_device, 998, writable=False)
    out = subprocess.run(['getfacl', '-pn', loop_device],
                         capture_output=True, text=True).stdout
    assert 'user:998:r--' in out
    st = os.stat(loop_device)
    assert st.st_uid == 0                       # owner untouched
    acl.clear_user_access(loop_device, 998)
    out = subprocess.run(['getfacl', '-pn', loop_device],
                         capture_output=True, text=True).stdout
    assert '998' not in out
    assert stat.S_IMODE(os.stat(loop_device).st_mode) == stat.S_IMODE(mode)


def test_a_user_can_really_read_after_grant(loop_device):
    acl.set_user_access(loop_device, 65534, writable=False)
    try:
        ok = subprocess.run(['setpriv', '--reuid=65534', '--regid=65534',
                             '--clear-groups', 'head', '-c', '1',
                             loop_device], capture_output=True)
        assert ok.returncode == 0, ok.stderr
        bad = subprocess.run(['setpriv', '--reuid=65534', '--regid=65534',
                              '--clear-groups', 'dd', 'if=/dev/zero',
                              'of=' + loop_device, 'bs=512', 'count=1'],
                             capture_output=True)
        assert bad.returncode != 0                  # read-only grant
    finally:
        acl.clear_user_access(loop_device, 65534)
    denied = subprocess.run(['setpriv', '--reuid=65534', '--regid=65534',
                             '--clear-groups', 'head', '-c', '1',
                             loop_device], capture_output=True)
    assert denied.returncode != 0


class FakeContext:
    def __init__(self, fail=None):
        self.channel = None
        self.pypath = 'fake'
        self.fail = fail
        self.starts = 0

    def start(self):
        self.starts += 1
        if self.fail:
            raise self.fail
        self.channel = object()


def test_daemons_start_in_the_background(monkeypatch):
    import glance_cinder_store.privileged as priv
    ours, brick = FakeContext(), FakeContext(OSError('no sudo'))
    monkeypatch.setattr(priv, '_contexts',
                        lambda want_ours: ([ours] if want_ours else []) +
                        [brick])
    monkeypatch.setattr(priv, 'init', lambda conf: None)
    priv.start_in_background('/etc/glance/rootwrap.conf').join(5)
    assert ours.channel is not None
    assert brick.starts == 1            # failed: logged, not raised
    priv.start_in_background('/etc/glance/rootwrap.conf').join(5)
    assert ours.starts == 1             # already running: left alone
    root = FakeContext()
    monkeypatch.setattr(priv, '_contexts',
                        lambda want_ours: [root] if want_ours else [])
    priv.start_in_background('x', ours=False).join(5)
    assert root.starts == 0


def test_a_forked_child_starts_its_own_daemons(monkeypatch):
    import glance_cinder_store.privileged as priv
    monkeypatch.setattr(priv.default, 'channel', object())
    priv._forget_parents_daemons()
    assert priv.default.channel is None


def test_configure_add_prestarts_unless_told_not_to(make_store, monkeypatch):
    import glance_cinder_store.privileged as priv
    calls = []
    monkeypatch.setattr(priv, 'start_in_background',
                        lambda conf, ours: calls.append((conf, ours)))
    make_store()
    assert calls == []
    make_store(cinder_plus_prestart_privsep=True)
    assert calls == [('/etc/glance/rootwrap.conf', os.getuid() != 0)]


def test_the_user_comes_from_sudo_not_the_caller(monkeypatch):
    monkeypatch.delenv('SUDO_UID', raising=False)
    with pytest.raises(PermissionError, match='sudo'):
        acl.service_uid()
    monkeypatch.setenv('SUDO_UID', '0')
    with pytest.raises(PermissionError):
        acl.service_uid()
    monkeypatch.setenv('SUDO_UID', '998')
    assert acl.service_uid() == 998


def test_mounted_devices_are_refused():
    root = os.stat('/').st_dev
    assert 'mounted on /' in acl._mounted_or_swap({root})


def test_revokes_only_what_it_granted(loop_device, ledger):
    acl.set_user_access(loop_device, 998, writable=False)
    os.unlink(ledger)                       # granted by someone else
    assert acl.clear_user_access(loop_device, 998) is False
    out = subprocess.run(['getfacl', '-pn', loop_device],
                         capture_output=True, text=True).stdout
    assert 'user:998:r--' in out
    acl.set_user_access(loop_device, 998, writable=False)
    assert acl.clear_user_access(loop_device, 998) is True
    out = subprocess.run(['getfacl', '-pn', loop_device],
                         capture_output=True, text=True).stdout
    assert '998' not in out


def test_partitions_and_held_devices_are_refused(tmp_path, monkeypatch):
    sysdir = tmp_path / 'sys'
    (sysdir / 'holders').mkdir(parents=True)
    monkeypatch.setattr(acl, '_sys_block', lambda rdev: str(sysdir))
    monkeypatch.setattr(acl, '_mounted_or_swap', lambda rdevs: None)
    acl._refuse_system_device(os.makedev(7, 0))         # a whole disk
    (sysdir / 'holders' / 'dm-0').write_text('')
    with pytest.raises(PermissionError, match='held'):
        acl._refuse_system_device(os.makedev(7, 0))
    (sysdir / 'partition').write_text('1')
    with pytest.raises(PermissionError, match='partition'):
        acl._refuse_system_device(os.makedev(7, 1))
