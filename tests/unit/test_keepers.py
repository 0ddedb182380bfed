"""Page-cache keepers: kept descriptors, and their release before a detach."""

import os
import subprocess
import sys
import textwrap
import time
import types

import pytest

from glance_cinder_store import activity
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
    assert len(k._kept) == 1
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


def _count_reads(monkeypatch, delay=0.0):
    """Record the (offset, bytes) of every fill read; optionally slow."""
    reads = []
    real = os.preadv

    def preadv(fd, buffers, offset):
        time.sleep(delay)
        got = real(fd, buffers, offset)
        reads.append((offset, got))
        return got
    monkeypatch.setattr(keepers.os, 'preadv', preadv)
    return reads


def test_fill_reads_the_image_once_in_the_background(tmp_path, monkeypatch):
    path = tmp_path / 'device'
    path.write_bytes(b'y' * (3 * keepers.FILL_CHUNK))
    reads = _count_reads(monkeypatch)
    k = keepers.Keepers(str(tmp_path))
    k.fill('vol-1', 100)                    # nothing kept: nothing to fill
    k.keep('vol-1', str(path))
    k.fill('vol-1', keepers.FILL_CHUNK + 1)
    k.fill('vol-1', keepers.FILL_CHUNK + 1)     # once per keeper
    k._kept['vol-1'].filling.join(5)
    assert reads == [(0, keepers.FILL_CHUNK),
                     (keepers.FILL_CHUNK, keepers.FILL_CHUNK)]
    assert k.holds('vol-1')                 # the fill leaves it kept
    k.drop('vol-1')
    assert not keepers._has_open(os.getpid(), str(path))


def test_letting_go_stops_a_fill_first(tmp_path, device, monkeypatch):
    reads = _count_reads(monkeypatch, delay=0.02)
    k = keepers.Keepers(str(tmp_path))
    k.keep('vol-1', device)
    k.fill('vol-1', 1 << 40)                # would take hours
    filling = k._kept['vol-1'].filling
    time.sleep(0.1)
    started = time.monotonic()
    k.let_go_everywhere('vol-1', device)
    assert time.monotonic() - started < 1
    assert not filling.is_alive()
    assert 0 < len(reads) < 50
    assert not keepers._has_open(os.getpid(), device)


def _fills_of(host, monkeypatch):
    """Record the keepers' fills instead of running them."""
    fills = []
    monkeypatch.setattr(host.keepers, 'fill',
                        lambda vol, size, busy, done: fills.append(
                            types.SimpleNamespace(volume_id=vol, size=size,
                                                  busy=busy, done=done)))
    return fills


def test_an_uncached_read_fills_the_page_cache_of_a_warm_attachment(
        make_store, cinder, volume, monkeypatch):
    host = make_host(make_store)
    fills = _fills_of(host, monkeypatch)
    with host.attach(cinder, volume, 'ro', fill_bytes=1234):
        pass                                # direct: fill afterwards
    assert [(f.volume_id, f.size) for f in fills] == [(volume.id, 1234)]
    fills[0].done()
    with host.attach(cinder, volume, 'ro', fill_bytes=1234) as second:
        assert second.page_cached           # filled: no second fill
    assert len(fills) == 1
    with pytest.raises(RuntimeError):
        with host.attach(cinder, volume, 'ro', fill_bytes=1234):
            raise RuntimeError('a failed read fills nothing')
    assert len(fills) == 1
    assert host.release_idle(cinder, volume.id)


def test_a_reader_does_not_wait_for_a_running_fill(make_store, cinder,
                                                   volume, monkeypatch):
    """Alone on an idle attachment whose fill is not done: read direct."""
    host = make_host(make_store)
    fills = _fills_of(host, monkeypatch)
    with host.attach(cinder, volume, 'ro', fill_bytes=1234):
        pass
    with host.attach(cinder, volume, 'ro', fill_bytes=1234) as second:
        assert not second.page_cached           # the fill still runs
        with host.attach(cinder, volume, 'ro', fill_bytes=1234) as third:
            assert third.page_cached            # reads alongside: share
    fills[0].done()                             # the fill is done
    with host.attach(cinder, volume, 'ro', fill_bytes=1234) as fourth:
        assert fourth.page_cached
    assert host.release_idle(cinder, volume.id)


def test_a_fill_done_after_the_detach_marks_no_later_attachment(
        make_store, cinder, volume, monkeypatch):
    host = make_host(make_store)
    fills = _fills_of(host, monkeypatch)
    with host.attach(cinder, volume, 'ro', fill_bytes=1234):
        pass
    assert host.release_idle(cinder, volume.id)
    with host.attach(cinder, volume, 'ro', fill_bytes=1234):
        pass                                    # a new attachment
    fills[0].done()                             # the old one's, late
    assert not host.records.load(volume.id).in_page_cache
    fills[1].done()
    assert host.records.load(volume.id).in_page_cache
    assert host.release_idle(cinder, volume.id)


@pytest.fixture
def kept_image(tmp_path):
    """A kept device holding an image of two fill chunks."""
    path = tmp_path / 'device'
    path.write_bytes(b'y' * (2 * keepers.FILL_CHUNK))
    k = keepers.Keepers(str(tmp_path))
    k.keep('vol-1', str(path))
    return k, str(path)


def test_a_fill_reports_done_only_when_it_read_everything(
        kept_image, monkeypatch):
    k, path = kept_image
    done = []
    k.fill('vol-1', 2 * keepers.FILL_CHUNK, done=lambda: done.append(1))
    k._kept['vol-1'].filling.join(5)
    assert done == [1]
    k.drop('vol-1')
    _count_reads(monkeypatch, delay=0.2)
    k.keep('vol-1', path)
    k.fill('vol-1', 2 * keepers.FILL_CHUNK, done=lambda: done.append(2))
    time.sleep(0.1)
    k.drop('vol-1')                             # stopped: not done
    assert done == [1]


def test_an_unusable_activity_file_never_fails_a_transfer(tmp_path):
    act = activity.HostActivity(str(tmp_path / 'gone'))   # no such folder
    with act.running():
        assert not act.busy()


def test_only_transfers_make_the_activity_file(tmp_path):
    """A fill asking after its state dir was removed leaves nothing."""
    act = activity.HostActivity(str(tmp_path))
    assert not act.busy() and os.listdir(tmp_path) == []
    with act.running():
        assert os.listdir(tmp_path) == ['activity']


def test_host_activity_is_seen_across_processes_and_dies_with_them(
        tmp_path):
    act = activity.HostActivity(str(tmp_path))
    assert not act.busy()
    with act.running():
        with act.running():
            assert act.busy()
        assert act.busy()
        assert not act.wait_quiet(0.05, timeout=0.2, poll=0.02)
    assert act.wait_quiet(0.05, timeout=1, poll=0.02)
    child = subprocess.Popen([sys.executable, '-c', textwrap.dedent("""
        import sys, time
        from glance_cinder_store import activity
        with activity.HostActivity(sys.argv[1]).running():
            print('running', flush=True)
            time.sleep(60)
        """), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == 'running\n'
        assert act.busy()
    finally:
        child.kill()
        child.wait()
    assert not act.busy()           # the kernel dropped the dead one's lock


def test_a_fill_waits_while_the_volume_is_read(kept_image, monkeypatch):
    k, _ = kept_image
    reads = _count_reads(monkeypatch)
    reading = [True]
    k.fill('vol-1', 2 * keepers.FILL_CHUNK, busy=lambda: reading[0])
    time.sleep(5 * keepers.FILL_YIELD)
    assert reads == []                      # a download runs: wait
    reading[0] = False
    k._kept['vol-1'].filling.join(5)
    assert len(reads) == 2
    k.drop('vol-1')


def test_the_fill_waits_while_the_volume_or_the_host_is_busy(
        make_store, cinder, volume, monkeypatch):
    host = make_host(make_store)
    fills = _fills_of(host, monkeypatch)
    with host.attach(cinder, volume, 'ro', fill_bytes=1234):
        pass
    busy = fills[0].busy
    assert busy() is False                  # idle and warm: fill
    with host.attach(cinder, volume, 'ro', fill_bytes=1234):
        assert busy() is True               # a download runs: wait
    assert busy() is False
    # an upload of another image, in another process of the host
    with activity.HostActivity(host.conf.cinder_plus_state_dir).running():
        assert busy() is True
    assert busy() is False
    assert host.release_idle(cinder, volume.id)
    assert busy() is False                  # gone: the fill is stopped


def test_readers_of_a_kept_device_see_one_another(make_store, cinder,
                                                  volume, monkeypatch):
    """Readers of one device know of one another.

    A direct reader learns that another came along; the buffered one's
    whole read marks the page cache filled, and no fill follows.
    """
    host = make_host(make_store)
    fills = _fills_of(host, monkeypatch)
    with host.attach(cinder, volume, 'ro', fill_bytes=1234) as first:
        assert not first.page_cached and not first.read_by_others()
        with host.attach(cinder, volume, 'ro', fill_bytes=1234) as second:
            assert second.page_cached           # reads alongside: shares
            assert first.read_by_others() and second.read_by_others()
            second.mark_page_cached()           # its whole read is done
        assert not first.read_by_others()
    assert fills == []                          # the image is in memory
    with host.attach(cinder, volume, 'ro', fill_bytes=1234) as alone:
        assert alone.page_cached
    assert host.release_idle(cinder, volume.id)


def test_readers_without_keepers_learn_nothing(make_store, cinder, volume):
    host = make_host(make_store, cinder_plus_keep_page_cache=False)
    with host.attach(cinder, volume, 'ro') as reader:
        assert reader.read_by_others is None
        assert reader.mark_page_cached is None
