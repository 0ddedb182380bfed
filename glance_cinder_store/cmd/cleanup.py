"""glance-cinder-store-cleanup: undo what crashed processes left behind.

On this host: attachments whose holders all died (record files in the state
folder) are detached; our attachments Cinder knows of but no record names
are deleted.  In Cinder: volumes still marked as an unfinished upload by a
process of this host that is gone (or, with --older-than, abandoned that
long by any host) are deleted.  --dry-run only reports.
"""

import datetime
import socket
import sys

from glance_cinder_store import attach
from glance_cinder_store.cmd import stores as stores_mod
from glance_cinder_store import holders
from glance_cinder_store import store as store_mod


def parse_mark(mark):
    fields = dict(part.split('=', 1) for part in mark.split() if '=' in part)
    since = datetime.datetime.fromisoformat(fields['since'])
    return fields.get('host'), int(fields.get('pid', 0)), since


def abandoned_uploads(all_volumes, older_than):
    """Volumes marked as uploading whose uploader is gone."""
    host = socket.gethostname()
    now = datetime.datetime.now(datetime.timezone.utc)
    found = []
    for vol in all_volumes:
        mark = (vol.metadata or {}).get(store_mod.UPLOAD_MARK)
        if not mark:
            continue
        try:
            mark_host, pid, since = parse_mark(mark)
        except (KeyError, ValueError):
            found.append((vol, 'unreadable upload mark %r' % mark))
            continue
        age = (now - since).total_seconds()
        if mark_host == host and holders.process_start_time(pid) is None:
            found.append((vol, 'uploader pid %d on this host is gone' % pid))
        elif age > older_than:
            found.append((vol, 'upload unfinished for %ds' % age))
    return found


def untracked_attachments(host_attachments, all_volumes):
    """(volume, attachment id) of ours on this host that no record names."""
    known = set()
    for volume_id in host_attachments.records.volume_ids():
        try:
            known.add(host_attachments.records.load(volume_id).attachment_id)
        except holders.CorruptRecord:
            continue
    return [(vol, att['attachment_id'])
            for vol in all_volumes for att in vol.attachments
            if att.get('host_name') == host_attachments.host and
            att.get('device') == attach.MOUNTPOINT and
            att['attachment_id'] not in known]


def store_volumes(store, volumes):
    """The volumes of this store's volume type (every project if allowed)."""
    found = volumes.list_all()
    wanted = store.store_conf.cinder_volume_type
    return [v for v in found if not wanted or v.volume_type == wanted]


def main(argv=None):
    conf, stores = stores_mod.load(sys.argv[1:] if argv is None else argv,
                                   'glance-cinder-store-cleanup')
    dry = conf.dry_run
    acted = 0
    for store_id, store in stores.items():
        volumes = store.volumes()
        if dry:
            print('%s: would check %d attachment record(s)' % (
                store_id, len(store.attachments.records.volume_ids())))
        else:
            for volume_id in store.attachments.recover(volumes):
                print('%s: detached volume %s (its holders died)'
                      % (store_id, volume_id))
                acted += 1
        all_volumes = store_volumes(store, volumes)
        for vol, att_id in untracked_attachments(store.attachments,
                                                 all_volumes):
            print('%s: %s attachment %s of volume %s (no record names it)'
                  % (store_id, 'would delete' if dry else 'deleting',
                     att_id, vol.id))
            if not dry:
                volumes.attachment_delete(att_id)
                acted += 1
        for vol, why in abandoned_uploads(all_volumes, conf.older_than):
            print('%s: %s volume %s: %s' % (
                store_id, 'would delete' if dry else 'deleting', vol.id,
                why))
            if not dry:
                store.attachments.release_idle(volumes, vol.id)
                for att in vol.attachments:
                    volumes.attachment_delete(att['attachment_id'])
                volumes.wait_for(volumes.get(vol.id), 'available',
                                 ('in-use', 'detaching', 'attaching',
                                  'reserved'))
                volumes.delete(vol.id)
                acted += 1
    print('done: %d action(s)%s' % (acted, ' (dry run)' if dry else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
