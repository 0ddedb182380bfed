"""POSIX ACL entries on device nodes: the encoding, and the root entry points.

The ACL is read and written as the ``system.posix_acl_access`` extended
attribute (version 2: a 4-byte header, then 8-byte entries of tag,
permissions and id), so no command is run.

What the root side enforces by itself: the user is the one sudo started
the daemon for (never chosen by the caller, never root); only whole block
devices in /dev, opened with O_NOFOLLOW and changed through that fd; never
a partition, nor a device that is mounted, has a mounted partition, is
used as swap or is held by another device; and it revokes only entries it
granted itself (a ledger in /run).
"""

import contextlib
import fcntl
import json
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


#: Where the daemon notes the grants it made (root only; gone at reboot,
#: like the ACLs on /dev nodes themselves).
LEDGER = '/run/glance-cinder-store/grants.json'


def service_uid():
    """The user to grant to: the one sudo started the daemon for.

    sudo sets SUDO_UID itself (the caller cannot choose it), so a caller
    of the entry points can never name another user.
    """
    try:
        uid = int(os.environ['SUDO_UID'])
    except (KeyError, ValueError):
        raise PermissionError('the privileged daemon was not started '
                              'through sudo: no user to grant access to')
    if uid <= 0:
        raise PermissionError('refusing to grant access to uid %s' % uid)
    return uid


def _sys_block(rdev):
    return '/sys/dev/block/%d:%d' % (os.major(rdev), os.minor(rdev))


def _mounted_or_swap(rdevs):
    """Why one of ``rdevs`` is in use by the system, or None."""
    wanted = {'%d:%d' % (os.major(r), os.minor(r)) for r in rdevs}
    with open('/proc/self/mountinfo') as f:
        for line in f:
            if line.split()[2] in wanted:
                return 'mounted on %s' % line.split()[4]
    with open('/proc/swaps') as f:
        for line in list(f)[1:]:
            try:
                if os.stat(line.split()[0]).st_rdev in rdevs:
                    return 'used as swap'
            except OSError:
                continue
    return None


def _refuse_system_device(rdev):
    """Refuse partitions, and devices mounted, swapped on or held."""
    sysdir = os.path.realpath(_sys_block(rdev))
    if os.path.exists(os.path.join(sysdir, 'partition')):
        raise PermissionError('a partition, not a whole volume')
    if os.listdir(os.path.join(sysdir, 'holders')):
        raise PermissionError('held by another device (dm, md, ...)')
    rdevs = {rdev}
    for entry in os.listdir(sysdir):
        dev_file = os.path.join(sysdir, entry, 'dev')
        if os.path.exists(os.path.join(sysdir, entry, 'partition')):
            with open(dev_file) as f:
                major, minor = f.read().strip().split(':')
            rdevs.add(os.makedev(int(major), int(minor)))
    why = _mounted_or_swap(rdevs)
    if why:
        raise PermissionError(why)


@contextlib.contextmanager
def _open_block(real, path):
    """An fd (O_NOFOLLOW) and its stat on the block device node ``real``."""
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                 os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISBLK(st.st_mode):
            raise PermissionError('not a block device: %s' % path)
        yield fd, st
    finally:
        os.close(fd)


@contextlib.contextmanager
def _device(path):
    """An fd on the block device ``path`` names, after the checks.

    Symlinks (/dev/disk/by-path/...) are resolved once; the device node is
    then opened with O_NOFOLLOW and every check and change goes through
    that fd, so the path cannot be swapped underneath.
    """
    real = os.path.realpath(path)
    if not real.startswith('/dev/'):
        raise PermissionError('not a device in /dev: %s' % path)
    with _open_block(real, path) as (fd, st):
        try:
            _refuse_system_device(st.st_rdev)
        except PermissionError as e:
            raise PermissionError('refusing %s: %s' % (path, e))
        yield fd, st


def _current(fd, st):
    try:
        return decode(os.getxattr(fd, XATTR))
    except OSError:
        return from_mode(st.st_mode)


@contextlib.contextmanager
def _ledger():
    """The grants this helper made: {"<rdev>": uid}, under a lock."""
    os.makedirs(os.path.dirname(LEDGER), mode=0o700, exist_ok=True)
    fd = os.open(LEDGER, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with open(fd, 'r+') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            grants = json.loads(f.read() or '{}')
        except ValueError:
            grants = {}
        yield grants
        f.seek(0)
        f.truncate()
        f.write(json.dumps(grants))


def set_user_access(path, uid, writable):
    """Give ``uid`` read (and write) access to a device; the root side."""
    if uid <= 0:
        raise PermissionError('refusing to grant access to uid %s' % uid)
    perm = READ | (WRITE if writable else 0)
    with _device(path) as (fd, st), _ledger() as grants:
        os.setxattr(fd, XATTR, encode(with_user(_current(fd, st), uid,
                                                perm)))
        grants[str(st.st_rdev)] = uid


def clear_user_access(path, uid):
    """Remove ``uid``'s entry if this helper added it; else leave it."""
    with _open_block(os.path.realpath(path), path) as (fd, st):
        with _ledger() as grants:
            if grants.get(str(st.st_rdev)) != uid:
                return False
            os.setxattr(fd, XATTR, encode(without_user(_current(fd, st),
                                                       uid)))
            del grants[str(st.st_rdev)]
            return True


# The entry points: run in the daemon, which finds them by these names.

@default.entrypoint
def grant(path, writable):
    set_user_access(path, service_uid(), writable)


@default.entrypoint
def revoke(path):
    return clear_user_access(path, service_uid())


@default.entrypoint
def ping():
    """Proves the daemon starts and runs as root (for the preflight check)."""
    return os.geteuid()
