"""The byte engine: exact round trips, zero ranges, sizes, errors, threads."""

import hashlib
import io
import os
import subprocess
import sys
import textwrap

from glance_store import exceptions
import pytest

from glance_cinder_store import transfer

MiB = 1024 * 1024
CHUNK = 256 * 1024


def random_bytes(n, seed=0):
    out, block = bytearray(), hashlib.sha512(b'%d' % seed).digest()
    while len(out) < n:
        out += block
        block = hashlib.sha512(block).digest()
    return bytes(out[:n])


def mixed_bytes(n):
    """Alternating 1 MiB runs of data and zeros, plus an odd tail."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += random_bytes(MiB, i) if i % 2 else bytes(MiB)
        i += 1
    return bytes(out[:n])


class Trickle(io.RawIOBase):
    """A source that returns short, odd-sized reads (like a socket)."""

    def __init__(self, data, step=777):
        self.data, self.pos, self.step = data, 0, step

    def read(self, n=-1):
        n = min(n, self.step)
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


@pytest.fixture
def device(tmp_path):
    """A pre-dirtied 8 MiB file: zero ranges must really be zeroed."""
    path = tmp_path / 'device'
    path.write_bytes(b'\xff' * (8 * MiB))
    return str(path)


CASES = {
    'random': lambda: random_bytes(3 * MiB + 5),
    'zeros': lambda: bytes(4 * MiB),
    'mixed': lambda: mixed_bytes(6 * MiB + 123),
    'odd-small': lambda: random_bytes(511),
    'one-byte': lambda: b'\x00',
    'empty-ish': lambda: random_bytes(4097),
}


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('green', [False, True])
def test_round_trip(device, case, green, monkeypatch):
    monkeypatch.setattr(transfer, 'threads_are_green', lambda: green)
    data = CASES[case]()
    result = transfer.write_image(Trickle(data), device, len(data),
                                  capacity=8 * MiB, hashing_algo='sha256',
                                  chunk_size=CHUNK)
    assert result.size == len(data)
    assert result.checksum == hashlib.md5(data).hexdigest()
    assert result.multihash == hashlib.sha256(data).hexdigest()
    back = b''.join(transfer.read_range(device, 0, len(data),
                                        chunk_size=CHUNK))
    assert back == data
    with open(device, 'rb') as f:     # nothing written past the image
        f.seek(len(data))
        assert f.read(1) in (b'\xff', b'')


class Recording(io.BytesIO):
    """A source that notes the size of every read asked of it."""

    def __init__(self, data):
        super().__init__(data)
        self.asked = []

    def read(self, n=-1):
        self.asked.append(n)
        return super().read(n)


@pytest.mark.parametrize('green', [False, True])
def test_the_source_is_read_in_pieces_of_an_http_chunk(device, green,
                                                       monkeypatch):
    """Glance's chunked-input reader copies more, the more a read asks."""
    monkeypatch.setattr(transfer, 'threads_are_green', lambda: green)
    data = mixed_bytes(6 * MiB + 123)
    source = Recording(data)
    result = transfer.write_image(source, device, len(data),
                                  capacity=8 * MiB, chunk_size=4 * MiB)
    assert result.checksum == hashlib.md5(data).hexdigest()
    assert set(source.asked) == {transfer.SOURCE_PIECE}
    assert b''.join(transfer.read_range(device, 0, len(data))) == data


def test_zero_runs_are_not_written(tmp_path):
    path = str(tmp_path / 'thin')
    with open(path, 'wb') as f:
        f.truncate(16 * MiB)
    data = mixed_bytes(16 * MiB)
    result = transfer.write_image(io.BytesIO(data), path, len(data),
                                  capacity=16 * MiB, chunk_size=4 * MiB)
    assert result.zeroed_bytes == 8 * MiB
    allocated = os.stat(path).st_blocks * 512
    assert allocated <= 8 * MiB + 64 * 1024
    assert b''.join(transfer.read_range(path, 0, len(data))) == data


def test_skip_zeroes_off_writes_everything(device):
    data = bytes(2 * MiB)
    result = transfer.write_image(io.BytesIO(data), device, len(data),
                                  capacity=8 * MiB, skip_zeroes=False)
    assert result.zeroed_bytes == 0
    assert b''.join(transfer.read_range(device, 0, len(data))) == data


@pytest.mark.parametrize('declared,actual', [(MiB, MiB - 1), (MiB, MiB + 1)])
def test_size_mismatch(device, declared, actual):
    with pytest.raises(exceptions.Invalid):
        transfer.write_image(io.BytesIO(b'a' * actual), device, declared,
                             capacity=8 * MiB, chunk_size=CHUNK)
    with open(device, 'rb') as f:     # never past the declared size
        f.seek(declared)
        assert f.read(1) == b'\xff'


def test_source_error_midway_propagates(device):
    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() >= MiB:
                raise ConnectionResetError('client went away')
            return super().read(n)

    with pytest.raises(ConnectionResetError):
        transfer.write_image(Broken(random_bytes(3 * MiB)), device, 3 * MiB,
                             capacity=8 * MiB, chunk_size=CHUNK)


def test_writer_error_stops_pipeline(device, monkeypatch):
    def fail(*a):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(transfer.os, 'pwrite', fail)
    with pytest.raises(OSError):
        transfer.write_image(io.BytesIO(random_bytes(4 * MiB)), device,
                             4 * MiB, capacity=8 * MiB, chunk_size=CHUNK,
                             queue_depth=1)


def test_too_big_without_grow_is_storage_full(device):
    with pytest.raises(exceptions.StorageFull):
        transfer.write_image(io.BytesIO(random_bytes(2 * MiB)), device, 0,
                             capacity=MiB, chunk_size=CHUNK)


def test_unknown_size_grows_and_reopens(tmp_path):
    paths = [str(tmp_path / ('dev%d' % i)) for i in range(3)]
    with open(paths[0], 'wb') as f:
        f.truncate(MiB)
    grown = []

    def grow(needed):
        # Simulate a re-attach: the data moves to a new, larger device.
        src, dst = paths[len(grown)], paths[len(grown) + 1]
        size = max(needed, 2 * os.path.getsize(src))
        with open(src, 'rb') as s, open(dst, 'wb') as d:
            d.write(s.read())
            d.truncate(size)
        grown.append(size)
        return size, dst

    data = random_bytes(3 * MiB + 1)
    result = transfer.write_image(io.BytesIO(data), paths[0], 0,
                                  capacity=MiB, grow=grow, chunk_size=CHUNK)
    assert result.size == len(data)
    assert grown == [2 * MiB, 4 * MiB]
    assert b''.join(transfer.read_range(paths[2], 0, len(data))) == data


@pytest.mark.parametrize('offset,length', [
    (0, 1), (1, 1), (CHUNK - 1, 2), (CHUNK, CHUNK), (CHUNK + 1, 3 * CHUNK),
    (5 * MiB - 1, 1), (0, 5 * MiB), (4096, 0)])
def test_ranged_reads(tmp_path, offset, length):
    data = random_bytes(5 * MiB)
    path = tmp_path / 'img'
    path.write_bytes(data)
    got = b''.join(transfer.read_range(str(path), offset, length,
                                       chunk_size=CHUNK))
    assert got == data[offset:offset + length]


def test_read_past_device_end_is_an_error(tmp_path):
    path = tmp_path / 'short'
    path.write_bytes(b'x' * 100)
    with pytest.raises(exceptions.BackendException):
        b''.join(transfer.read_range(str(path), 0, 200))


def test_read_closed_early_stops_read_ahead(tmp_path):
    handle = io.BytesIO(random_bytes(4 * MiB))
    it = transfer.read_range(handle, 0, 4 * MiB, chunk_size=CHUNK,
                             queue_depth=2)
    next(it)
    it.close()
    import threading
    assert not [t for t in threading.enumerate()
                if t.name == 'gcs-read-ahead']


def test_buffered_reads_stay_in_the_callers_thread(tmp_path, monkeypatch):
    path = tmp_path / 'img'
    data = random_bytes(MiB + 1)
    uncached(path, data)
    import threading
    readers = set()
    real_pread = os.pread

    def pread(fd, n, at):
        readers.add(threading.get_ident())
        return real_pread(fd, n, at)
    monkeypatch.setattr(transfer.os, 'pread', pread)
    assert b''.join(transfer.read_range(str(path), 0, len(data),
                                        chunk_size=CHUNK)) == data
    assert readers == {threading.get_ident()}


def test_direct_reads_are_read_ahead_into_a_ring(tmp_path, monkeypatch):
    """A thread reads ahead; each piece is a copy the caller owns."""
    path = tmp_path / 'img'
    data = random_bytes(4 * MiB + 5)
    uncached(path, data)
    import threading
    readers = set()
    real_preadv = os.preadv

    def preadv(*args):
        readers.add(threading.get_ident())
        return real_preadv(*args)
    monkeypatch.setattr(transfer.os, 'preadv', preadv)
    pieces = list(transfer.read_range(str(path), 0, len(data),
                                      chunk_size=CHUNK, queue_depth=2,
                                      direct=True))
    # all pieces kept until the end: none was overwritten by a later one
    assert all(type(p) is bytes for p in pieces)
    assert b''.join(pieces) == data
    assert threading.get_ident() not in readers


def uncached(path, data):
    """``data`` written to ``path`` and dropped from the page cache.

    (Written by another descriptor: O_DIRECT reads must see it all.)
    """
    path.write_bytes(data)
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def count_reads(monkeypatch):
    """Count buffered reads and O_DIRECT reads."""
    import fcntl
    seen = {'buffered': 0, 'direct': 0}
    real_pread, real_preadv = os.pread, os.preadv

    def pread(fd, n, at):
        seen['buffered'] += 1
        return real_pread(fd, n, at)

    def preadv(fd, buffers, at, *flags):
        assert not flags        # no RWF_NOWAIT probe: it starts a read
        direct = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        seen['direct' if direct else 'buffered'] += 1
        return real_preadv(fd, buffers, at, *flags)
    monkeypatch.setattr(transfer.os, 'pread', pread)
    monkeypatch.setattr(transfer.os, 'preadv', preadv)
    return seen


@pytest.mark.parametrize('offset,length', [
    (0, 5 * MiB), (1, 3 * CHUNK), (CHUNK + 7, MiB + 5), (4096, 4095),
    (5 * MiB - 3, 3)])
def test_direct_reads_use_o_direct(tmp_path, monkeypatch, offset, length):
    data = random_bytes(5 * MiB)
    path = tmp_path / 'img'
    uncached(path, data)
    seen = count_reads(monkeypatch)
    got = b''.join(transfer.read_range(str(path), offset, length,
                                       chunk_size=CHUNK, direct=True))
    assert got == data[offset:offset + length]
    # at most the unaligned head (up to 4 KiB) is read buffered
    head = -offset % transfer.ALIGN
    assert seen['buffered'] == (1 if head else 0), seen
    assert seen['direct'] >= (1 if length > head else 0), seen


def test_a_direct_read_turns_buffered_when_another_reader_joins(
        tmp_path, monkeypatch):
    data = random_bytes(5 * MiB)
    path = tmp_path / 'img'
    uncached(path, data)
    monkeypatch.setattr(transfer.DeviceReader, 'LOOK_INTERVAL', 0)
    seen = count_reads(monkeypatch)
    answers = iter([False, False, True])

    def leave_direct():
        joined = next(answers, True)
        if joined:
            assert seen['direct'] == 2 and seen['buffered'] == 0, seen
        return joined
    got = b''.join(transfer.read_range(str(path), 0, len(data),
                                       chunk_size=CHUNK, direct=True,
                                       leave_direct=leave_direct))
    assert got == data
    assert seen['direct'] == 2 and seen['buffered'] >= 1, seen


def test_a_direct_read_stays_direct_when_nobody_can_tell(tmp_path,
                                                         monkeypatch):
    data = random_bytes(2 * MiB)
    path = tmp_path / 'img'
    uncached(path, data)
    monkeypatch.setattr(transfer.DeviceReader, 'LOOK_INTERVAL', 0)
    seen = count_reads(monkeypatch)

    def leave_direct():
        raise OSError('record unreadable')
    assert b''.join(transfer.read_range(str(path), 0, len(data),
                                        chunk_size=CHUNK, direct=True,
                                        leave_direct=leave_direct)) == data
    assert seen['buffered'] == 0 and seen['direct'] >= 1, seen


def test_without_direct_every_read_is_buffered(tmp_path, monkeypatch):
    data = random_bytes(2 * MiB)
    path = tmp_path / 'img'
    uncached(path, data)
    seen = count_reads(monkeypatch)
    assert b''.join(transfer.read_range(str(path), 0, len(data),
                                        chunk_size=CHUNK)) == data
    assert seen['direct'] == 0, seen


def test_a_device_refusing_o_direct_is_read_buffered(tmp_path, monkeypatch):
    import errno
    import fcntl
    data = random_bytes(MiB + 3)
    path = tmp_path / 'img'
    uncached(path, data)
    real = os.preadv
    refused = []

    def preadv(fd, buffers, at, *flags):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(at)
            raise OSError(errno.EINVAL, 'no O_DIRECT here')
        return real(fd, buffers, at, *flags)
    monkeypatch.setattr(transfer.os, 'preadv', preadv)
    advice = []
    real_fadvise = os.posix_fadvise
    monkeypatch.setattr(transfer.os, 'posix_fadvise',
                        lambda fd, at, n, how: (advice.append(how),
                                                real_fadvise(fd, at, n, how)))
    assert b''.join(transfer.read_range(str(path), 0, len(data),
                                        chunk_size=CHUNK,
                                        direct=True)) == data
    assert refused == [0]       # asked once, then buffered
    assert advice == [os.POSIX_FADV_SEQUENTIAL]     # with read-ahead


def test_handle_targets(tmp_path):
    data = random_bytes(MiB + 3)
    handle = io.BytesIO(bytes(2 * MiB))
    transfer.write_image(io.BytesIO(data), handle, len(data),
                         capacity=2 * MiB, chunk_size=CHUNK)
    assert transfer.device_size(handle) == 2 * MiB
    assert b''.join(transfer.read_range(handle, 0, len(data))) == data


def test_works_in_an_eventlet_patched_process(tmp_path):
    """glance-api may run monkey-patched: the engine must still work."""
    script = textwrap.dedent('''
        import eventlet
        eventlet.monkey_patch()
        import hashlib, io, sys
        from glance_cinder_store import transfer
        assert transfer.threads_are_green()
        data = bytes(range(256)) * 40000 + bytes(3 * 1024 * 1024)
        path = sys.argv[1]
        open(path, 'wb').truncate(len(data))
        r = transfer.write_image(io.BytesIO(data), path, len(data),
                                 capacity=len(data))
        assert r.checksum == hashlib.md5(data).hexdigest()
        assert b''.join(transfer.read_range(path, 0, len(data))) == data
        print('ok')
    ''')
    out = subprocess.run([sys.executable, '-c', script,
                          str(tmp_path / 'dev')], capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == 'ok', out.stderr[-2000:]


def test_block_device_zeroing(tmp_path):
    """On a real loop device, zero runs read back as zeros (root only)."""
    if os.geteuid() != 0 or not os.path.exists('/dev/loop-control'):
        pytest.skip('needs root and loop devices')
    backing = tmp_path / 'backing'
    backing.write_bytes(b'\xff' * (16 * MiB))
    dev = subprocess.run(['losetup', '-f', '--show', str(backing)],
                         capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        data = mixed_bytes(12 * MiB + 512)
        result = transfer.write_image(io.BytesIO(data), dev, len(data),
                                      capacity=16 * MiB, chunk_size=4 * MiB)
        assert result.zeroed_bytes >= 6 * MiB
        assert b''.join(transfer.read_range(dev, 0, len(data))) == data
        assert transfer.device_size(dev) == 16 * MiB
    finally:
        subprocess.run(['losetup', '-d', dev], check=True)
    with open(backing, 'rb') as f:
        assert f.read(len(data)) == data


def test_first_piece_is_small_for_a_quick_first_byte(tmp_path):
    path = tmp_path / 'img'
    data = random_bytes(3 * MiB)
    path.write_bytes(data)
    pieces = list(transfer.read_range(str(path), 0, len(data),
                                      chunk_size=MiB))
    assert [len(p) for p in pieces][:2] == [transfer.FIRST_PIECE, MiB]
    assert b''.join(pieces) == data


def test_direct_reads_under_eventlet_stay_in_the_caller(tmp_path,
                                                        monkeypatch):
    path = tmp_path / 'img'
    data = random_bytes(2 * MiB + 9)
    uncached(path, data)
    monkeypatch.setattr(transfer, 'threads_are_green', lambda: True)
    seen = count_reads(monkeypatch)
    import threading
    before = threading.active_count()
    assert b''.join(transfer.read_range(str(path), 3, len(data) - 3,
                                        chunk_size=CHUNK,
                                        direct=True)) == data[3:]
    assert seen['direct'] >= 1 and threading.active_count() == before


def test_ring_memory_is_reused_by_the_next_read(tmp_path):
    data = random_bytes(MiB)
    path = tmp_path / 'img'
    uncached(path, data)
    first = transfer.DeviceReader(str(path), CHUNK, True, buffers=3)
    memory = first._memory
    first.close()
    second = transfer.DeviceReader(str(path), CHUNK, True, buffers=3)
    try:
        assert second._memory is memory
        assert b''.join(transfer._pieces(second.pread, 0, len(data),
                                         CHUNK)) == data
    finally:
        second.close()


def test_what_comes_from_memory_or_a_copy_is_handed_in_small_pieces(
        tmp_path, monkeypatch):
    """Pieces uwsgi copies while they are still in the CPU's cache.

    A direct read keeps its large device requests and hands slices of them;
    a read of what is in the page cache asks for small pieces; a cold
    buffered read keeps large requests, for the device's sake.
    """
    monkeypatch.setattr(transfer, 'HANDED_PIECE', 256 * 1024)
    path = tmp_path / 'img'
    data = random_bytes(4 * MiB + 5)
    uncached(path, data)
    sizes = {}
    for way, kwargs in (('direct', dict(direct=True)),
                        ('cached', dict(cached=True)),
                        ('cold', {})):
        seen = count_reads(monkeypatch)
        pieces = list(transfer.read_range(str(path), 0, len(data),
                                          chunk_size=MiB, **kwargs))
        assert b''.join(pieces) == data
        sizes[way] = (max(len(p) for p in pieces), sum(seen.values()))
    assert sizes['direct'] == (256 * 1024, 5)       # 4 MiB + 5 in 1 MiB
    assert sizes['cached'] == (256 * 1024, 17)
    assert sizes['cold'] == (MiB, 5)
