"""glance-cinder-store-cleanup: undo what crashed processes left behind.

The same reconciler glance-api runs by itself (heal.py), run on demand,
plus what only an operator should decide: attachments of ours on this host
that no record names are undone (each under its volume's lock, the device
disconnected first, never while a process has it open), and Glance images
that a dead upload left ``saving`` are reported (and deleted through
Glance's API with ``--delete-saving-images``).  Uploads are judged by their
process on this host and by their heartbeat elsewhere, never by age; other
hosts' attachments are never touched.  ``--dry-run`` takes the same
decisions and reports them without acting.  Runs as the glance-api user,
never as root.
"""

import os
import sys

from glance_cinder_store.cmd import stores as stores_mod
from glance_cinder_store import heal


def _saving_images(store, dry_run, delete):
    """Report (and delete) images left 'saving' by dead uploads."""
    state_dir = store.store_conf.cinder_plus_state_dir
    entries = heal.dead_uploads(state_dir)
    if not entries:
        return []
    from glanceclient import client as glance_client
    glance = glance_client.Client('2', session=store.clients.session())
    lines, keep = [], {}
    for image_id, volume_id in sorted(entries.items()):
        try:
            status = glance.images.get(image_id).status
        except Exception as e:
            if 'not found' in str(e).lower() or '404' in str(e):
                continue
            keep[image_id] = volume_id
            lines.append('image %s: cannot read its status: %s'
                         % (image_id, e))
            continue
        if status != 'saving':
            continue
        if not delete or dry_run:
            keep[image_id] = volume_id
            lines.append('image %s: left saving by a dead upload (volume %s '
                         'deleted)%s' % (image_id, volume_id,
                                         ': would delete' if delete else
                                         '; --delete-saving-images deletes '
                                         'it'))
            continue
        try:
            glance.images.delete(image_id)
            lines.append('image %s: left saving by a dead upload: deleted'
                         % image_id)
        except Exception as e:
            keep[image_id] = volume_id
            lines.append('image %s: could not delete it: %s' % (image_id, e))
    if not dry_run:
        heal.save_dead_uploads(state_dir, keep)
    return lines


def main(argv=None):
    if os.geteuid() == 0:
        print('glance-cinder-store-cleanup must not run as root: run it as '
              'the glance-api user (e.g. sudo -u glance ...), whose state '
              'folder and privileges it shares', file=sys.stderr)
        return 2
    conf, stores = stores_mod.load(sys.argv[1:] if argv is None else argv,
                                   'glance-cinder-store-cleanup')
    dry = conf.dry_run
    acted = 0
    for store_id, store in stores.items():
        healer = heal.Healer(store)
        findings = healer.reconcile(store.volumes(), dry_run=dry,
                                    untracked=True,
                                    stale_after=conf.stale_after)
        for finding in findings:
            print('%s: %s' % (store_id, finding))
            if finding.outcome in ('detached', 'deleted'):
                acted += 1
        for line in _saving_images(store, dry, conf.delete_saving_images):
            print('%s: %s' % (store_id, line))
            if line.endswith(': deleted'):
                acted += 1
    print('done: %d action(s)%s' % (acted, ' (dry run)' if dry else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
