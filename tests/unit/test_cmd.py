"""The operator tools' decisions, on fake Cinder data."""

import json
import logging
import os
import subprocess
import sys

from glance_store import exceptions
import pytest

from glance_cinder_store import attach
from glance_cinder_store.cmd import check
from glance_cinder_store.cmd import cleanup
from glance_cinder_store.cmd import tool
from glance_cinder_store import heal
from glance_cinder_store import holders
from glance_cinder_store import store as store_mod
from tests.unit import fakes
from tests.unit import test_heal

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


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


# -- the command-line surface: output, exit status, logging, warnings ----

GLANCE_API_CONF = """[DEFAULT]
enabled_backends = gold:cinder_plus, files:file
debug = true
log_file = %(tmp)s/glance-api.log

[gold]
cinder_volume_type = gold-type
cinder_plus_state_dir = %(tmp)s/state
"""


@pytest.fixture
def glance_conf(tmp_path):
    path = tmp_path / 'glance-api.conf'
    path.write_text(GLANCE_API_CONF % {'tmp': tmp_path})
    return str(path)


@pytest.fixture(autouse=True)
def restore_logging():
    """oslo.log's setup replaces the root logger's handlers: undo it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def fake_checks(outcomes):
    def checks(store, attach_test):
        for name, ok in outcomes:
            def run(volumes, ok=ok, name=name):
                if not ok:
                    raise RuntimeError('%s is broken' % name)
                return '%s fine' % name
            yield name, run
    return checks


@pytest.mark.parametrize('outcomes,status', [
    ([('cinder', True), ('privsep', True)], 0),
    ([('cinder', True), ('privsep', False)], 1),
])
def test_check_reports_as_json_with_its_exit_status(
        glance_conf, monkeypatch, capsys, outcomes, status):
    monkeypatch.setattr(check, '_checks', fake_checks(outcomes))
    monkeypatch.setattr(store_mod.CinderStore, 'volumes',
                        lambda self, context=None: None)
    assert check.main(['--config-file', glance_conf,
                       '--format', 'json']) == status
    report = json.loads(capsys.readouterr().out)
    assert report['ok'] is (status == 0)
    assert [(r['store'], r['check'], r['ok']) for r in report['results']] == [
        ('gold', name, ok) for name, ok in outcomes]


def test_check_text_report(glance_conf, monkeypatch, capsys):
    monkeypatch.setattr(check, '_checks', fake_checks([('cinder', True),
                                                       ('privsep', False)]))
    monkeypatch.setattr(store_mod.CinderStore, 'volumes',
                        lambda self, context=None: None)
    assert check.main(['--config-file', glance_conf]) == 1
    assert capsys.readouterr().out.splitlines() == [
        'OK    gold     cinder       cinder fine',
        'FAIL  gold     privsep      privsep is broken']


def test_configuration_errors_exit_2(tmp_path, capsys):
    assert check.main(['--config-file', str(tmp_path / 'missing.conf')]) == 2
    assert 'missing.conf' in capsys.readouterr().err
    other = tmp_path / 'other.conf'
    other.write_text('[DEFAULT]\nenabled_backends = files:file\n')
    assert check.main(['--config-file', str(other)]) == 2
    assert check.main(['--config-file', str(other), '--no-such-option']) == 2
    assert check.main(['--config-file', str(other), '--format', 'yaml']) == 2
    assert 'yaml' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        check.main(['--help'])
    assert e.value.code == 0


def test_tools_log_where_their_command_line_says(glance_conf, tmp_path):
    """Not into glance-api's log file, nor at its debug level."""
    conf = tool.setup_logging(['--config-file', glance_conf], [], 'x')
    assert not conf.debug and not conf.log_file and conf.use_stderr
    logging.getLogger('glance_cinder_store.test').warning('hello')
    assert not os.path.exists(tmp_path / 'glance-api.log')
    own = tmp_path / 'tool.log'
    conf = tool.setup_logging(['--config-file', glance_conf, '--debug',
                               '--log-file', str(own)], [], 'x')
    assert conf.debug and not conf.use_stderr
    logging.getLogger('glance_cinder_store.test').debug('in detail')
    assert 'in detail' in own.read_text()


def test_tools_print_no_warnings():
    """Nothing on stderr before the help text: no eventlet warning."""
    code = ('import sys\n'
            'from glance_cinder_store.cmd import check, cleanup\n'
            'from glance_cinder_store import privileged\n'
            'sys.exit(check.main(["--help"]))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0
    assert 'Exit status: 0' in out.stdout
    assert out.stderr == ''


def test_eventlet_notice_relayed_by_privsep_is_dropped():
    relayed = [
        '/venv/oslo_privsep/daemon.py:105: EventletDeprecationWarning: ',
        'Eventlet is deprecated. It is currently being maintained in bugfix',
        'we strongly recommend against using it for new projects.',
        '',
        'framework.  For more detail see',
        '  import eventlet',
        'privsep daemon running as pid 42',
    ]
    notice = tool.EventletNotice()
    kept = [line for line in relayed if notice.filter(logging.LogRecord(
        tool.PRIVSEP_LOGGER, logging.WARNING, __file__, 1,
        'privsep log: %s', (line,), None))]
    assert kept == ['privsep daemon running as pid 42']


# -- check --attach-test -------------------------------------------------

@pytest.mark.parametrize('grace', [0, 60])
def test_attach_round_trip_leaves_nothing(make_store, cinder, grace):
    store = make_store(cinder_plus_attach_grace_period=grace)
    message = check.attach_round_trip(store, cinder)
    assert '%d bytes read' % check.BLOCK in message
    assert [c[1] for c in cinder.calls if c[0] == 'create'] == [1]
    assert [c[2] for c in cinder.calls if c[0] == 'attachment_create'] == [
        'ro']
    assert cinder.volumes == {} and cinder.attachments == {}
    assert fakes.FakeConnection.connected == {}


def test_attach_round_trip_failure_leaves_nothing(store, cinder):
    fakes.FakeConnection.fail_connect = OSError('no such device')
    with pytest.raises(OSError, match='no such device'):
        check.attach_round_trip(store, cinder)
    assert cinder.volumes == {} and cinder.attachments == {}


def test_attach_round_trip_says_what_it_left_behind(store, cinder):
    cinder.fail['delete'] = exceptions.BackendException('Cinder said no')
    with pytest.raises(RuntimeError, match='left behind: Cinder said no'):
        check.attach_round_trip(store, cinder)
    (vol,) = cinder.volumes.values()
    assert holders.UPLOAD_MARK in vol.metadata     # heal deletes it later


def test_check_runs_the_attach_test_only_when_asked(glance_conf, monkeypatch,
                                                    capsys):
    calls = []
    monkeypatch.setattr(check, 'attach_round_trip',
                        lambda store, volumes: calls.append(store) or 'ok')
    monkeypatch.setattr(store_mod.CinderStore, 'volumes',
                        lambda self, context=None: object())
    check.main(['--config-file', glance_conf, '--format', 'json'])
    assert calls == []
    check.main(['--config-file', glance_conf, '--format', 'json',
                '--attach-test'])
    report = json.loads(capsys.readouterr().out.split('\n}\n')[1] + '\n}')
    assert [r for r in report['results'] if r['check'] == 'attach'] == [
        {'store': 'gold', 'check': 'attach', 'ok': True, 'message': 'ok'}]


# -- cleanup's report ----------------------------------------------------

class Conf:
    dry_run = False
    stale_after = None
    delete_saving_images = False
    format = 'json'


@pytest.mark.parametrize('outcomes,status', [
    ([], 0),
    (['deleted', 'detached', 'already gone'], 0),
    (['deleted', 'failed, retried later: boom'], 1),
    (['would delete'], 1),
])
def test_cleanup_exit_status_says_whether_something_is_left(
        store, monkeypatch, capsys, outcomes, status):
    class Healer:
        def __init__(self, store):
            pass

        def reconcile(self, volumes, **kwargs):
            return [heal.Finding('v%d' % i, 'delete volume', 'test', o)
                    for i, o in enumerate(outcomes)]
    monkeypatch.setattr(heal, 'Healer', Healer)
    assert cleanup.body(Conf, {'gold': store}) == status
    report = json.loads(capsys.readouterr().out)
    assert report['ok'] is (status == 0)
    assert [f['outcome'] for f in report['findings']] == outcomes
    assert report['actions'] == sum(o in ('deleted', 'detached')
                                    for o in outcomes)
