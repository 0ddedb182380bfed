"""The warm attachment cache: bounds, LRU, expiry, yielding to others."""

import time
import types

import pytest

from glance_cinder_store import attach
from glance_cinder_store import warm
from tests.unit import fakes
from tests.unit.test_attach import creates


class Evictions:
    def __init__(self):
        self.calls = []

    def __call__(self, volume_id, volumes, force):
        self.calls.append((volume_id, force))


def cache(size=2, idle=60, check=5, wanted=None):
    evict = Evictions()
    c = warm.WarmCache(size, idle, check, evict,
                       None if wanted is None else
                       (lambda volumes, ids, each:
                        [i for i in ids if i in wanted]))
    c._start = lambda: None         # no sweeper thread: tests call sweep()
    return c, evict


def test_least_recently_used_goes_beyond_the_bound():
    c, evict = cache(size=2)
    for vid in ('a', 'b', 'c'):
        c.keep(vid, 'vols')
    c.keep('a', 'vols')             # used again: now the most recent
    c.sweep()
    assert evict.calls == [('b', True)]
    assert list(c._entries) == ['c', 'a']


def test_idle_ones_expire_and_spare_a_newer_user():
    c, evict = cache(idle=10)
    c.keep('a', 'vols')
    c.sweep(now=time.monotonic() + 5)
    assert evict.calls == []
    c.sweep(now=time.monotonic() + 11)
    # force=False: another process that left it idle later keeps it
    assert evict.calls == [('a', False)]
    assert len(c) == 0


def test_a_reader_takes_it_out_of_the_cache():
    c, evict = cache(idle=10)
    c.keep('a', 'vols')
    c.take('a')
    c.sweep(now=time.monotonic() + 11)
    assert evict.calls == [] and 'a' not in c


def test_another_host_asking_makes_it_go_at_the_next_check():
    c, evict = cache(check=5, wanted={'b'})
    c.keep('a', 'vols')
    c.keep('b', 'vols')
    now = time.monotonic()
    c.sweep(now=now + 6)
    assert evict.calls == [('b', True)]
    c._released_elsewhere = lambda volumes, ids, each: list(ids)
    c.sweep(now=now + 7)            # checked less than 5 s ago
    assert 'a' in c


class Asked:
    """A released_elsewhere that records each question."""

    def __init__(self):
        self.questions = []

    def __call__(self, volumes, ids, each):
        self.questions.append((volumes, sorted(ids), each))
        return []


def test_one_question_for_all_the_stores_own_attachments():
    c, _ = cache(size=4, check=5)
    asked = c._released_elsewhere = Asked()
    service_a = types.SimpleNamespace(as_service=True)
    service_b = types.SimpleNamespace(as_service=True)
    user = types.SimpleNamespace(as_service=False)  # asks for its own only
    c.keep('a', service_a)
    c.keep('b', service_b)
    c.keep('u', user)
    c.sweep(now=time.monotonic() + 6)
    assert asked.questions == [(service_a, ['a', 'b'], False),
                               (user, ['u'], False)]


def test_every_so_often_each_volume_is_looked_at():
    c, _ = cache(idle=1000, check=5)
    asked = c._released_elsewhere = Asked()
    c.keep('a', 'vols')
    now = time.monotonic()
    for n in range(1, 2 * warm.WarmCache.LOOK_AT_EACH_EVERY + 1):
        c.sweep(now=now + 6 * n)
    each = [n for n, (_, _, look) in enumerate(asked.questions, 1) if look]
    assert each == [warm.WarmCache.LOOK_AT_EACH_EVERY,
                    2 * warm.WarmCache.LOOK_AT_EACH_EVERY]


def test_disabled_by_size_or_idle():
    assert not cache(size=0)[0].enabled
    assert not cache(idle=0)[0].enabled
    assert cache()[0].enabled


def test_after_fork_the_parents_entries_are_not_ours():
    c, evict = cache()
    c.keep('a', 'vols')
    c._pid = -1                     # as seen from a forked child
    c.keep('b', 'vols')
    assert list(c._entries) == ['b']


def test_close_lets_go_of_everything():
    c, evict = cache()
    c.keep('a', 'vols')
    c.keep('b', 'vols')
    c.close()
    assert sorted(evict.calls) == [('a', True), ('b', True)]


# -- with the real host attachments --------------------------------------

@pytest.fixture
def make_host(make_store):
    def make(**overrides):
        host = attach.HostAttachments(make_store(**overrides).store_conf,
                                      wait_timeout=0.5)
        host.warm._start = lambda: None     # the tests call sweep()
        return host
    return make


@pytest.fixture
def volume(cinder):
    return cinder.get(cinder.create(1, 'image-x', {}, 'gold-type').id)


def test_back_to_back_readers_reuse_one_attachment(make_host, cinder,
                                                   volume):
    host = make_host(cinder_plus_attach_grace_period=60)
    for _ in range(3):
        with host.attach(cinder, volume, 'ro'):
            pass
    assert len(creates(cinder)) == 1
    assert len(cinder.attachments) == 1
    assert volume.id in host.warm
    host.warm.close()
    assert cinder.attachments == {}


def test_bound_detaches_the_least_recently_used(make_host, cinder):
    host = make_host(cinder_plus_attach_grace_period=60,
                     cinder_plus_warm_attachments=1)
    a = cinder.get(cinder.create(1, 'image-a', {}, 'gold-type').id)
    b = cinder.get(cinder.create(1, 'image-b', {}, 'gold-type').id)
    for vol in (a, b):
        with host.attach(cinder, vol, 'ro'):
            pass
    host.warm.sweep()
    assert [v for v, _, _ in cinder.attachments.values()] == [b.id]
    assert fakes.FakeConnection.connected == {b.path: 1}
    host.warm.close()


def test_a_delete_elsewhere_is_noticed(make_host, cinder, volume):
    host = make_host(cinder_plus_attach_grace_period=60)
    with host.attach(cinder, volume, 'ro'):
        pass
    cinder.request_release(volume.id)   # what another host's delete does
    host.warm.sweep(now=time.monotonic() + 6)  # next check, not expired
    assert cinder.attachments == {}
    assert fakes.FakeConnection.connected == {}


def test_warm_ups_take_the_newest_first_and_keep_no_more_than_fit():
    ups = warm.WarmUps(2, 60, wait_quiet=lambda t: False, warm_up=None)
    for volume_id in ('a', 'b', 'c'):
        ups.add(volume_id, 1)
    assert len(ups) == 2                    # 'a' would not stay warm
    assert ups.next() == ('c', 1)
    assert ups.next(now=time.monotonic() + 61) is None   # 'b' went stale
    assert ups.next() is None


def test_warm_ups_wait_for_a_quiet_host_and_run_one_at_a_time():
    quiet = [False]
    done = []
    ups = warm.WarmUps(8, 60, wait_quiet=lambda t: quiet[0] or
                       time.sleep(0.01), warm_up=lambda v, s: done.append(v))
    ups.add('a', 1)
    ups.add('b', 2)
    time.sleep(0.1)
    assert done == []                       # the host is busy
    quiet[0] = True
    assert ups.wait_done(5)
    assert done == ['b', 'a']


def test_a_failed_warm_up_does_not_stop_the_next():
    done = []

    def warm_up(volume_id, size):
        if volume_id == 'bad':
            raise RuntimeError('deleted meanwhile')
        done.append(volume_id)
    ups = warm.WarmUps(8, 60, wait_quiet=lambda t: True, warm_up=warm_up)
    ups.add('bad', 1)
    assert ups.wait_done(5)
    ups.add('good', 1)
    assert ups.wait_done(5) and done == ['good']


# -- the host's release board ---------------------------------------------

class Marks:
    """An ``ask`` for the board that counts the questions."""

    def __init__(self, answer):
        self.answer = answer
        self.asked = 0

    def __call__(self):
        self.asked += 1
        return self.answer


def test_the_board_answers_for_every_process_while_fresh(tmp_path,
                                                         monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(warm.time, 'time', lambda: now[0])
    path = str(tmp_path / 'release-marks-k.json')
    one, other = (warm.ReleaseBoard(path, 2.5, str(tmp_path))
                  for _ in range(2))
    ask = Marks({'a', 'b'})
    assert one.marked(ask) == {'a', 'b'}
    now[0] += 2
    assert other.marked(ask) == {'a', 'b'}     # another process: no query
    assert ask.asked == 1
    now[0] += 1
    ask.answer = {'c'}
    assert other.marked(ask) == {'c'} and ask.asked == 2


def test_a_refused_or_unreadable_board_means_asking(tmp_path):
    path = tmp_path / 'release-marks-k.json'
    board = warm.ReleaseBoard(str(path), 60, str(tmp_path))
    refused = Marks(None)
    assert board.marked(refused) is None
    assert board.marked(refused) is None and refused.asked == 2
    path.write_text('{not json')
    assert board.marked(Marks({'a'})) == {'a'}


def test_processes_of_a_host_share_one_query(make_host, cinder, volume):
    """Two glance-api processes, the store's own credentials."""
    cinder.service_key = 'k'
    hosts = [make_host(cinder_plus_attach_grace_period=60) for _ in (1, 2)]
    cinder.request_release(volume.id)
    for host in hosts:
        assert host._released_elsewhere(cinder, [volume.id, 'x'],
                                        each=False) == [volume.id]
    assert [c[0] for c in cinder.calls].count('marked_for_release') == 1
    # every so often each volume is looked at, by each process
    assert hosts[0]._released_elsewhere(cinder, [volume.id], each=True) == [
        volume.id]
    assert ('release_requested', (volume.id,)) in cinder.calls


def test_without_the_filter_the_board_looks_at_each(make_host, cinder,
                                                    volume):
    cinder.service_key = 'k'
    cinder.refuse_filter = True
    host = make_host(cinder_plus_attach_grace_period=60)
    cinder.request_release(volume.id)
    assert host._released_elsewhere(cinder, [volume.id, 'x'],
                                    each=False) == [volume.id, 'x']
    assert ('release_requested', (volume.id, 'x')) in cinder.calls
