"""The operator tools against the real cloud, as the glance user runs them."""

import dataclasses
import datetime
import os
import subprocess

import pytest

from glance_cinder_store import holders
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
    # (a store with a missing volume type: test_glance_modes)
    assert not lines(out, 'FAIL', '', ''), out.stdout
    assert out.returncode == 0


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


def _mark(process, age_s):
    then = (datetime.datetime.now(datetime.timezone.utc) -
            datetime.timedelta(seconds=age_s)).replace(microsecond=0)
    return holders.UploadMark(process, then, then).format()


def test_cleanup_judges_uploads_by_process_never_by_age(cinder):
    me = holders.Process.of(os.getpid())
    live_text = _mark(me, 3 * 86400)
    far_text = _mark(dataclasses.replace(me, host='another-host'), 3600)
    live = cinder.volumes.create(1, name='image-live-upload-by-test',
                                 volume_type='glance-gold', metadata={
                                     holders.UPLOAD_MARK: live_text})
    far = cinder.volumes.create(1, name='image-far-upload-by-test',
                                volume_type='glance-gold', metadata={
                                    holders.UPLOAD_MARK: far_text})
    try:
        fx.wait_volume(cinder, live.id)
        fx.wait_volume(cinder, far.id)
        dry = run('glance-cinder-store-cleanup', '--dry-run',
                  '--stale-after', '600', user='glance')
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert 'volume %s: delete volume' % far.id in dry.stdout, dry.stdout
        assert 'would delete' in dry.stdout
        assert live.id not in dry.stdout
        assert cinder.volumes.get(far.id)
        # without a heartbeat margin another host's upload is not judged
        real = run('glance-cinder-store-cleanup', user='glance')
        assert far.id not in real.stdout, real.stdout
        real = run('glance-cinder-store-cleanup', '--stale-after', '600',
                   user='glance')
        assert real.returncode == 0, real.stdout + real.stderr
        assert 'volume %s: delete volume' % far.id in real.stdout
        fx.wait_gone(cinder, far.id)
        # a live upload, however old, is never deleted
        assert cinder.volumes.get(live.id).status == 'available'
    finally:
        for vol in (live, far):
            try:
                cinder.volumes.delete(vol.id)
            except Exception:
                pass


def test_cleanup_refuses_to_run_as_root():
    out = run('glance-cinder-store-cleanup')
    assert out.returncode == 2 and 'root' in out.stderr
