"""POSIX ACL entries on device nodes: the encoding, and the root entry points.

The ACL is read and written as the ``system.posix_acl_access`` extended
attribute (version 2: a 4-byte header, then 8-byte entries of tag,
permissions and id), so no command is run.
"""

import os
import stat
import struct

from glance_cinder_store.privileged import default

XATTR = 'system.posix_acl_access'
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 1, 2, 4, 8, 16, 32
UNDEFINED_ID = 0xFFFFFFFF
READ, WRITE = 4, 2
_ENTRY = struct.Struct('<HHI')


def decode(raw):
    (version,) = struct.unpack_from('<I', raw)
    if version != VERSION or (len(raw) - 4) % _ENTRY.size:
        raise ValueError('unknown ACL encoding')
    return [_ENTRY.unpack_from(raw, 4 + i * _ENTRY.size)
            for i in range((len(raw) - 4) // _ENTRY.size)]


def encode(entries):
    return struct.pack('<I', VERSION) + b''.join(
        _ENTRY.pack(*e) for e in sorted(entries, key=lambda e: (e[0], e[2])))


def from_mode(mode):
    """The minimal ACL equivalent to a file mode."""
    return [(USER_OBJ, (mode >> 6) & 7, UNDEFINED_ID),
            (GROUP_OBJ, (mode >> 3) & 7, UNDEFINED_ID),
            (OTHER, mode & 7, UNDEFINED_ID)]


def _with_mask(entries):
    """Recompute the mask: needed whenever named entries exist."""
    body = [e for e in entries if e[0] != MASK]
    named = [e for e in body if e[0] in (USER, GROUP)]
    if not named:
        return body
    mask = 0
    for tag, perm, _ in body:
        if tag in (USER, GROUP, GROUP_OBJ):
            mask |= perm
    return body + [(MASK, mask, UNDEFINED_ID)]


def with_user(entries, uid, perm):
    rest = [e for e in entries if not (e[0] == USER and e[2] == uid)]
    return _with_mask(rest + [(USER, perm, uid)])


def without_user(entries, uid):
    return _with_mask([e for e in entries
                       if not (e[0] == USER and e[2] == uid)])


def _device(path):
    """Refuse anything but a block device node in /dev."""
    real = os.path.realpath(path)
    if not real.startswith('/dev/') or not stat.S_ISBLK(
            os.stat(real).st_mode):
        raise PermissionError('not a block device in /dev: %s' % path)
    return real


def _current(real):
    try:
        return decode(os.getxattr(real, XATTR))
    except OSError:
        return from_mode(os.stat(real).st_mode)


def set_user_access(path, uid, writable):
    """Give ``uid`` read (and write) access to a device; the root side."""
    if uid <= 0:
        raise PermissionError('refusing to grant access to uid %s' % uid)
    real = _device(path)
    perm = READ | (WRITE if writable else 0)
    os.setxattr(real, XATTR, encode(with_user(_current(real), uid, perm)))


def clear_user_access(path, uid):
    """Remove ``uid``'s entry; a minimal ACL folds back into the mode."""
    real = _device(path)
    entries = _current(real)
    os.setxattr(real, XATTR, encode(without_user(entries, uid)))


# The entry points: run in the daemon, which finds them by these names.

@default.entrypoint
def grant(path, uid, writable):
    set_user_access(path, uid, writable)


@default.entrypoint
def revoke(path, uid):
    clear_user_access(path, uid)


@default.entrypoint
def ping():
    """Proves the daemon starts and runs as root (for the preflight check)."""
    return os.geteuid()
