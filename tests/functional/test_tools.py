"""The operator tools against the real cloud, as the glance user runs them."""

import os
import socket
import subprocess

import pytest

from tests.functional import conftest as fx

BIN = os.path.join(fx.AIO_ROOT, 'venv', 'bin')


def run(tool, *args, user=None):
    cmd = [os.path.join(BIN, tool), '--config-file', fx.GLANCE_CONF]
    cmd += list(args)
    if user:
        cmd = ['sudo', '-u', user] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          cwd='/')


@pytest.fixture(autouse=True)
def tools_installed():
    if not os.path.exists(os.path.join(BIN, 'glance-cinder-store-check')):
        pytest.skip('the cloud has no glance-cinder-store tools installed')


def lines(out, verdict, store, check):
    return [line for line in out.stdout.splitlines()
            if line.startswith(verdict) and store in line and check in line]


def test_preflight_check_as_the_glance_user():
    out = run('glance-cinder-store-check', user='glance')
    for store in ('gold', 'silver'):
        for check in ('cinder', 'volume type', 'state dir', 'privsep'):
            assert lines(out, 'OK', store, check), out.stdout + out.stderr
    # the aio's store 'broken' names a volume type Cinder does not have
    assert lines(out, 'FAIL', 'broken', 'volume type')
    assert out.returncode == 1


def test_preflight_check_names_what_is_wrong(tmp_path):
    broken = tmp_path / 'broken.conf'
    broken.write_text('[gold]\ncinder_volume_type = no-such-type\n'
                      'cinder_plus_state_dir = /proc/nope\n')
    out = run('glance-cinder-store-check', '--config-file', str(broken))
    assert out.returncode == 1
    fails = [line for line in out.stdout.splitlines()
             if line.startswith('FAIL')]
    assert any('gold' in f and 'volume type' in f for f in fails), fails
    assert any('gold' in f and 'state dir' in f and 'cinder_plus_state_dir'
               in f for f in fails), fails
    assert not any('silver' in f for f in fails)


def test_cleanup_deletes_abandoned_uploads(cinder):
    gone = subprocess.Popen(['true'])
    gone.wait()
    mark = 'host=%s pid=%d since=2026-01-01T00:00:00+00:00' % (
        socket.gethostname(), gone.pid)
    vol = cinder.volumes.create(1, name='image-abandoned-by-test',
                                volume_type='glance-gold', metadata={
                                    'glance_cinder_store_upload': mark})
    fx.wait_volume(cinder, vol.id)
    try:
        dry = run('glance-cinder-store-cleanup', '--dry-run')
        assert 'would delete volume %s' % vol.id in dry.stdout, dry.stdout
        assert cinder.volumes.get(vol.id)
        real = run('glance-cinder-store-cleanup')
        assert real.returncode == 0, real.stdout + real.stderr
        assert 'deleting volume %s' % vol.id in real.stdout
        fx.wait_gone(cinder, vol.id)
    finally:
        try:
            cinder.volumes.delete(vol.id)
        except Exception:
            pass
