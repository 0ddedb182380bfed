"""Page-cache keepers: kept descriptors, and their release before a detach."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from glance_cinder_store import keepers
from tests.unit import fakes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# A glance-api process in miniature: keeps ``path`` open, reports requests.
CHILD = textwrap.dedent('''
    import sys, time
    from glance_cinder_store import keepers
    state, path, mode = sys.argv[1:4]
    k = keepers.Keepers(state)
    k.on_request.append(lambda v: print('asked', v, flush=True))
    if mode == 'deaf':      # listens on its FIFO but never reads it
        import os
        os.makedirs(k.dir, exist_ok=True)
        os.mkfifo(k._fifo(os.getpid()))
        fifo = os.open(k._fifo(os.getpid()), os.O_RDWR)
        held = open(path)
    else:
        k.keep('vol-1', path)
    print('ready', flush=True)
    time.sleep(60)
''')


@pytest.fixture
def device(tmp_path):
    path = tmp_path / 'device'
    path.write_bytes(b'x' * 4096)
    return str(path)


@pytest.fixture
def child(tmp_path, device):
    procs = []

    def start(mode='keep'):
        proc = subprocess.Popen(
            [sys.executable, '-c', CHILD, str(tmp_path / 'state'), device,
             mode], stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=REPO))
        assert proc.stdout.readline().strip() == 'ready'
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_keep_holds_one_descriptor_until_dropped(tmp_path, device):
    k = keepers.Keepers(str(tmp_path))
    k.keep('vol-1', device)
    k.keep('vol-1', device)
    assert k.holds('vol-1')
    assert keepers._has_open(os.getpid(), device)
    assert len(k._fds) == 1
    k.drop('vol-1')
    assert not k.holds('vol-1')
    assert not keepers._has_open(os.getpid(), device)


def test_stores_of_one_process_share_its_keepers(make_store, cinder,
                                                 volume):
    gold = make_host(make_store)
    silver = make_host(make_store)
    assert gold.keepers is silver.keepers
    with gold.attach(cinder, volume, 'ro'):
        pass
    assert len(os.listdir(gold.keepers.dir)) == 1       # one FIFO
    # another process's detach reaches the store that keeps the volume
    gold.keepers._serve_one(volume.id)
    assert not gold.keepers.holds(volume.id)
    assert volume.id not in gold.warm


def test_a_detach_makes_another_process_let_go_at_once(tmp_path, device,
                                                       child):
    proc = child()
    assert keepers._has_open(proc.pid, device)
    t = time.monotonic()
    left = keepers.Keepers(str(tmp_path / 'state')).let_go_everywhere(
        'vol-1', device)
    assert left == []
    assert time.monotonic() - t < 1.0
    assert not keepers._has_open(proc.pid, device)
    assert proc.stdout.readline().split() == ['asked', 'vol-1']


def test_a_deaf_keeper_delays_the_detach_at_most_the_timeout(
        tmp_path, device, child):
    proc = child('deaf')
    t = time.monotonic()
    left = keepers.Keepers(str(tmp_path / 'state')).let_go_everywhere(
        'vol-1', device, timeout=0.3)
    assert left == [proc.pid]
    assert 0.3 <= time.monotonic() - t < 2.0


def test_a_dead_keeper_leaves_nothing_to_wait_for(tmp_path, device, child):
    proc = child()
    fifo = os.path.join(str(tmp_path / 'state'), 'keepers', str(proc.pid))
    assert os.path.exists(fifo)
    proc.kill()
    proc.wait()
    assert keepers.Keepers(str(tmp_path / 'state')).let_go_everywhere(
        'vol-1', device, timeout=0.3) == []
    assert not os.path.exists(fifo)     # its FIFO is cleaned up


def test_a_fork_does_not_keep_the_parents_descriptors(tmp_path, device):
    k = keepers.Keepers(str(tmp_path))
    k.keep('vol-1', device)
    pid = os.fork()
    if pid == 0:        # the child: inherited descriptors are closed
        ok = not k.holds('vol-1') and not keepers._has_open(os.getpid(),
                                                            device)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert k.holds('vol-1')
    k.close()


# -- through HostAttachments ------------------------------------------------

@pytest.fixture
def volume(cinder):
    vol = cinder.create(1, 'image-x', {}, 'gold-type')
    return cinder.get(vol.id)


def make_host(make_store, **overrides):
    from glance_cinder_store import attach
    overrides.setdefault('cinder_plus_attach_grace_period', 60)
    conf = make_store(**overrides).store_conf
    return attach.HostAttachments(conf, wait_timeout=0.5)


def test_later_readers_of_a_kept_device_read_its_page_cache(
        make_store, cinder, volume):
    host = make_host(make_store)
    with host.attach(cinder, volume, 'ro') as first:
        assert not first.page_cached        # nothing cached yet: direct
    assert host.keepers.holds(volume.id)    # idle, warm, kept open
    with host.attach(cinder, volume, 'ro') as second:
        assert second.page_cached
    assert host.release_idle(cinder, volume.id)
    assert not host.keepers.holds(volume.id)
    assert cinder.attachments == {}
    assert fakes.FakeConnection.connected == {}


def test_without_keepers_every_read_is_direct(make_store, cinder, volume):
    host = make_host(make_store, cinder_plus_keep_page_cache=False)
    for _ in range(2):
        with host.attach(cinder, volume, 'ro') as reader:
            assert not reader.page_cached
    assert not host.keepers.holds(volume.id)


def test_descriptors_close_before_the_device_is_disconnected(
        make_store, cinder, volume, monkeypatch):
    host = make_host(make_store)
    seen = []
    real = fakes.FakeConnection.disconnect

    def disconnect(conn, *args):
        seen.append(host.keepers.holds(volume.id))
        return real(conn, *args)
    monkeypatch.setattr(fakes.FakeConnection, 'disconnect', disconnect)
    with host.attach(cinder, volume, 'ro'):
        pass
    assert host.keepers.holds(volume.id)
    assert host.release_idle(cinder, volume.id)     # a delete, say
    assert seen == [False]
    assert cinder.attachments == {}
