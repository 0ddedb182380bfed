"""RBD without a local attach: per-process librbd handles (os-brick mocked).

A fake image stands in for librbd; a fake os-brick connector hands out
wrappers around it the way RBDConnector(do_local_attach=False) does.
"""

import io
import json
import os
from unittest import mock

from glance_store import exceptions
import pytest

from glance_cinder_store import connectors
from glance_cinder_store.connectors import base
from glance_cinder_store.connectors import rbd
from glance_cinder_store import transfer

MiB = 1024 * 1024
#: the real one: the unit tests' cinder fixture swaps in a fake
FOR_CONNECTION = connectors.for_connection
INFO = {'driver_volume_type': 'rbd', 'name': 'volumes/volume-1',
        'cluster_name': 'ceph', 'auth_username': 'cinder',
        'hosts': ['127.0.0.1'], 'ports': ['6789'], 'do_local_attach': False}


class FakeImage:
    """librbd's Image: positional I/O, bytes only, no reads past the end."""

    def __init__(self, size, fill=b'\0'):
        self.data = bytearray(fill * size)
        self.zeroed = []
        self.closed = False

    def size(self):
        return len(self.data)

    def read(self, offset, length):
        assert offset + length <= len(self.data), 'read past the end'
        return bytes(self.data[offset:offset + length])

    def write(self, data, offset):
        if not isinstance(data, bytes):
            raise TypeError('data must be a string')
        assert offset + len(data) <= len(self.data), 'write past the end'
        self.data[offset:offset + len(data)] = data
        return len(data)

    def write_zeroes(self, offset, length):
        self.zeroed.append((offset, length))
        self.data[offset:offset + length] = bytes(length)

    def flush(self):
        pass

    def resize(self, size):
        self.data.extend(bytes(size - len(self.data)))


class BrickWrapper(io.RawIOBase):
    """Like os-brick's RBDVolumeIOWrapper: seek and write return None."""

    def __init__(self, image, conf):
        self.rbd_image = image
        self.rbd_conf = conf
        self._offset = 0

    def seek(self, offset, whence=0):
        self._offset = offset + (self.rbd_image.size() if whence == 2 else 0)

    def tell(self):
        return self._offset

    def read(self, n):
        n = max(0, min(n, self.rbd_image.size() - self._offset))
        data = self.rbd_image.read(self._offset, n)
        self._offset += n
        return data

    def write(self, data):
        self.rbd_image.write(bytes(data), self._offset)
        self._offset += len(data)


@pytest.fixture
def brick(monkeypatch, tmp_path):
    """A fake RBDConnector; every connect writes a 'key' conf like os-brick."""
    image = FakeImage(4 * MiB)
    fake = mock.Mock()
    fake.image = image
    fake.confs = []

    def connect(props):
        conf = tmp_path / ('brickrbd_%d' % len(fake.confs))
        conf.write_text('[client.cinder]\nkey = secret\n')
        fake.confs.append(str(conf))
        return {'path': BrickWrapper(image, str(conf))}

    def disconnect(props, device_info, force=False):
        handle = device_info['path']
        if os.path.exists(handle.rbd_conf):
            os.unlink(handle.rbd_conf)
        handle.rbd_image.closed = True

    fake.connect_volume.side_effect = connect
    fake.disconnect_volume.side_effect = disconnect
    monkeypatch.setattr(base.brick_connector.InitiatorConnector, 'factory',
                        mock.Mock(return_value=fake))
    monkeypatch.setattr(rbd, '_open', {})
    return fake


def connection(info=INFO):
    return connectors.for_connection(dict(info), root_helper='sudo x')


def test_connect_keeps_only_what_rebuilds_the_handle(brick):
    device_info = connection().connect()
    json.dumps(device_info)         # goes into the host record
    assert device_info['path'] is None
    assert device_info['rbd'] == 'volumes/volume-1'
    assert brick.connect_volume.call_count == 1


def test_no_key_file_is_left_while_the_handle_is_open(brick):
    conn = connection()
    conn.connect()
    target = conn.open_target({'path': None}, writable=True)
    assert brick.confs and not any(os.path.exists(c) for c in brick.confs)
    conn.close_target(target)


def test_holders_of_one_process_share_one_handle(brick):
    conn = connection()
    conn.connect()
    first = conn.open_target({'path': None}, writable=False)
    second = connection().open_target({'path': None}, writable=False)
    assert brick.connect_volume.call_count == 1     # the one from connect
    first.seek(100)
    assert second.tell() == 0       # each holder has its own offset
    conn.close_target(first)
    brick.disconnect_volume.assert_not_called()
    conn.close_target(second)
    assert brick.disconnect_volume.call_count == 1
    assert brick.image.closed


def test_a_process_joining_opens_its_own_handle(brick):
    conn = connection()             # the record exists: no connect() here
    target = conn.open_target({'path': None, 'rbd': 'volumes/volume-1'},
                              writable=False)
    assert brick.connect_volume.call_count == 1
    conn.close_target(target)
    assert brick.disconnect_volume.call_count == 1
    target = conn.open_target({'path': None}, writable=False)
    assert brick.connect_volume.call_count == 2     # reopened, not reused
    conn.close_target(target)


def test_disconnect_closes_only_an_unused_handle(brick):
    conn = connection()
    conn.disconnect(None)           # nothing open here: nothing to do
    brick.disconnect_volume.assert_not_called()
    conn.connect()
    target = conn.open_target({'path': None}, writable=False)
    conn.disconnect({'path': None})
    brick.disconnect_volume.assert_not_called()     # still in use
    conn.close_target(target)
    conn.connect()                  # a parked handle (attach undone)
    conn.disconnect({'path': None})
    assert brick.disconnect_volume.call_count == 2


def test_connect_failure_says_what_the_host_needs(brick):
    brick.connect_volume.side_effect = RuntimeError('An unknown exception')
    with pytest.raises(exceptions.BackendException,
                       match='ceph.client.cinder.keyring'):
        connection().connect()


def test_image_file_behaves_like_a_file(brick):
    image = FakeImage(10)
    f = rbd.ImageFile(image)
    assert f.seek(0, os.SEEK_END) == 10 and f.tell() == 10
    assert f.read(5) == b''
    assert f.seek(-4, os.SEEK_CUR) == 6
    assert f.write(b'ab') == 2 and f.tell() == 8
    f.seek(4)
    assert f.read() == b'\0\0ab\0\0'
    with pytest.raises(io.UnsupportedOperation):
        f.fileno()
    with pytest.raises(ValueError):
        f.seek(-1)


def test_device_size_works_when_seek_returns_none():
    wrapper = BrickWrapper(FakeImage(3 * MiB), '/nonexistent')
    wrapper.seek(5)
    assert transfer.device_size(wrapper) == 3 * MiB
    assert wrapper.tell() == 5


def _data():
    from tests.unit.test_transfer import mixed_bytes
    return mixed_bytes(3 * MiB + 12345)


def test_write_through_an_image_file_zeroes_without_writing():
    image = FakeImage(4 * MiB, fill=b'\xff')    # dirty: zeros must land
    data = _data()
    result = transfer.write_image(io.BytesIO(data), rbd.ImageFile(image),
                                  len(data), capacity=4 * MiB,
                                  chunk_size=MiB)
    assert bytes(image.data[:len(data)]) == data
    assert result.zeroed_bytes > 0 and image.zeroed
    assert sum(n for _, n in image.zeroed) == result.zeroed_bytes
    read = b''.join(transfer.read_range(rbd.ImageFile(image), 0, len(data),
                                        chunk_size=MiB))
    assert read == data


def test_write_through_os_brick_wrapper_writes_every_byte():
    image = FakeImage(4 * MiB, fill=b'\xff')
    data = _data()
    result = transfer.write_image(io.BytesIO(data),
                                  BrickWrapper(image, '/x'), len(data),
                                  capacity=4 * MiB, chunk_size=MiB)
    assert bytes(image.data[:len(data)]) == data
    assert result.zeroed_bytes == 0


def test_unknown_size_grows_the_image():
    image = FakeImage(1 * MiB)
    data = _data()
    grown = []

    def grow(needed):
        image.resize(needed + MiB)
        grown.append(needed)
        return image.size(), rbd.ImageFile(image)

    result = transfer.write_image(io.BytesIO(data), rbd.ImageFile(image), 0,
                                  capacity=MiB, grow=grow, chunk_size=MiB)
    assert grown and result.size == len(data)
    assert bytes(image.data[:len(data)]) == data


def test_concurrent_readers_share_a_handle_safely(brick):
    data = _data()
    brick.image.data = bytearray(data)
    conn = connection()
    targets = [conn.open_target({'path': None}, writable=False)
               for _ in range(4)]
    readers = [transfer.read_range(t, i * 1000, len(data) - i * 1000,
                                   chunk_size=64 * 1024)
               for i, t in enumerate(targets)]
    out = [bytearray() for _ in readers]
    live = list(range(len(readers)))
    while live:                     # interleave the readers' chunks
        for i in list(live):
            try:
                out[i] += next(readers[i])
            except StopIteration:
                live.remove(i)
    for i, got in enumerate(out):
        assert bytes(got) == data[i * 1000:]
    for t in targets:
        conn.close_target(t)
    assert brick.disconnect_volume.call_count == 1


def test_host_record_keeps_no_handle_and_no_key(brick, cinder, make_store,
                                                monkeypatch):
    """Through attach.py: the record rebuilds the handle, nothing more."""
    from glance_cinder_store import attach
    monkeypatch.setattr(attach.connectors, 'for_connection',
                        FOR_CONNECTION)
    monkeypatch.setattr(cinder, 'connection_info', lambda volume_id: dict(
        INFO, name='volumes/volume-%s' % volume_id, keyring='AQBsecret=='))
    host = attach.HostAttachments(make_store().store_conf, wait_timeout=0.5)
    vol = cinder.get(cinder.create(1, 'image-x', {}, 'gold-type').id)
    brick.image.resize(1024 ** 3)
    with host.attach(cinder, vol, 'rw') as attached:
        assert attached.target.write(b'data') == 4
        with open(host.records.path(vol.id)) as f:
            text = f.read()
        assert 'AQBsecret' not in text and 'BrickWrapper' not in text
        record = json.loads(text)
        assert record['connection_info']['name'] == 'volumes/volume-%s' % (
            vol.id)
        assert record['device_info'] == {'path': None,
                                         'rbd': 'volumes/volume-%s' % vol.id}
        assert not any(os.path.exists(c) for c in brick.confs)
    assert brick.connect_volume.call_count == 1
    assert brick.disconnect_volume.call_count == 1
    assert rbd._open == {} and cinder.attachments == {}
    assert bytes(brick.image.data[:4]) == b'data'
