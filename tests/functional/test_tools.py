"""The operator tools against the real cloud, as the glance user runs them."""

import dataclasses
import datetime
import json
import os
import subprocess
import tempfile

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
    for store in (fx.names.GOLD, fx.names.SILVER):
        for check in ('cinder', 'volume type', 'state dir', 'privsep'):
            assert lines(out, 'OK', store, check), out.stdout + out.stderr
    # (a store with a missing volume type: test_glance_modes)
    assert not lines(out, 'FAIL', '', ''), out.stdout
    assert out.returncode == 0


def quiet(out):
    """No deprecation or eventlet warning on the terminal, no traceback.

    (os-brick's warnings about this host, e.g. no iSCSI initiator name,
    are the host's business and stay.)
    """
    assert 'deprecat' not in out.stderr.lower(), out.stderr
    assert 'eventlet' not in out.stderr.lower(), out.stderr
    assert 'Traceback' not in out.stderr, out.stderr


def test_check_attach_round_trip_as_json():
    out = run('glance-cinder-store-check', '--attach-test', '--format',
              'json', user='glance')
    quiet(out)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report['ok'] is True
    results = {(r['store'], r['check']): r for r in report['results']}
    for store in (fx.names.GOLD, fx.names.SILVER):
        attach = results[(store, 'attach')]
        assert attach['ok'], attach
        assert 'attached read-only' in attach['message']
        assert 'detached and deleted' in attach['message']
    # nothing_leaks: no volume, attachment or loop device left behind


def test_tools_log_through_oslo_log_where_told():
    folder = tempfile.mkdtemp(prefix='gcs-tools-')
    os.chmod(folder, 0o777)
    log_file = os.path.join(folder, 'check.log')
    try:
        out = run('glance-cinder-store-check', '--debug', '--log-file',
                  log_file, user='glance')
        quiet(out)
        assert out.stderr == ''
        assert lines(out, 'OK', fx.names.GOLD, 'privsep'), out.stdout
        with open(log_file) as f:
            logged = f.read()
        assert ' DEBUG ' in logged, logged[:2000]
        cleanup = run('glance-cinder-store-cleanup', '--dry-run', '--format',
                      'json', user='glance')
        quiet(cleanup)
        report = json.loads(cleanup.stdout)
        assert report['dry_run'] is True
        assert cleanup.returncode == (0 if report['ok'] else 1)
    finally:
        subprocess.run(['rm', '-rf', folder])


def test_usage_errors_exit_2():
    out = run('glance-cinder-store-check', '--format', 'yaml',
              user='glance')
    assert out.returncode == 2, out.stdout + out.stderr
    out = run('glance-cinder-store-check', '--config-file',
              '/nonexistent/glance-api.conf', user='glance')
    assert out.returncode == 2 and 'nonexistent' in out.stderr


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
    gold = fx.TYPES[fx.names.GOLD]
    live = cinder.volumes.create(1, name='image-live-upload-by-test',
                                 volume_type=gold, metadata={
                                     holders.UPLOAD_MARK: live_text})
    far = cinder.volumes.create(1, name='image-far-upload-by-test',
                                volume_type=gold, metadata={
                                    holders.UPLOAD_MARK: far_text})
    try:
        fx.wait_volume(cinder, live.id)
        fx.wait_volume(cinder, far.id)
        dry = run('glance-cinder-store-cleanup', '--dry-run',
                  '--stale-after', '600', user='glance')
        # exit status 1: the dry run found work left to do
        assert dry.returncode == 1, dry.stdout + dry.stderr
        assert 'volume %s: delete volume' % far.id in dry.stdout, dry.stdout
        assert 'would delete' in dry.stdout
        assert live.id not in dry.stdout
        assert cinder.volumes.get(far.id)
        # without a heartbeat margin another host's upload is not judged
        real = run('glance-cinder-store-cleanup', user='glance')
        assert far.id not in real.stdout, real.stdout
        real = run('glance-cinder-store-cleanup', '--stale-after', '600',
                   user='glance')
        # (0, or 1 if the shared cloud has leftovers it cannot undo yet)
        assert real.returncode in (0, 1), real.stdout + real.stderr
        assert [line for line in real.stdout.splitlines()
                if far.id in line and line.endswith(': deleted')], real.stdout
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
