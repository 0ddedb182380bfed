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

One line per finding (or ``--format json``).  Exit status 0 when nothing
is left to undo, 1 when something found is still there (a dry run that
found work, an action that failed, an image left ``saving`` that is only
reported), 2 on a usage or configuration error or when run as root.
"""

import dataclasses
import sys

from oslo_config import cfg

from glance_cinder_store.cmd import tool
from glance_cinder_store import heal

PROG = 'glance-cinder-store-cleanup'
EPILOG = ('Exit status: 0 nothing is left to undo; 1 something found is '
          'still there (a dry run that found work, an action that failed, '
          'an image left saving that is only reported); 2 usage or '
          'configuration error, or run as root.')
CLI_OPTS = [
    cfg.BoolOpt('dry-run', default=False, help='Report, change nothing.'),
    cfg.FloatOpt(
        'stale-after', default=None,
        help='Seconds without heartbeat after which an upload of another '
             'host counts as abandoned (default: '
             'cinder_plus_upload_stale_after; 0 never). Uploads of this '
             'host are judged by their process, never by age.'),
    cfg.BoolOpt(
        'delete-saving-images', default=False,
        help='Delete, through Glance\'s API, images that a dead upload '
             'left in status saving (default: report them).'),
]
#: Outcomes after which nothing is left to do about a finding.
SETTLED = ('detached', 'deleted', 'already gone', 'upload finished')


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


def body(conf, stores):
    dry = conf.dry_run
    findings, images = [], []
    for store_id, store in stores.items():
        healer = heal.Healer(store)
        for finding in healer.reconcile(store.volumes(), dry_run=dry,
                                        untracked=True,
                                        stale_after=conf.stale_after):
            findings.append(dict(dataclasses.asdict(finding),
                                 store=store_id, text=str(finding)))
        for line in _saving_images(store, dry, conf.delete_saving_images):
            images.append({'store': store_id, 'text': line,
                           'deleted': line.endswith(': deleted')})
    acted = (sum(f['outcome'] in ('detached', 'deleted') for f in findings) +
             sum(i['deleted'] for i in images))
    left = ([f for f in findings if f['outcome'] not in SETTLED] +
            [i for i in images if not i['deleted']])
    lines = ['%s: %s' % (r['store'], r['text']) for r in findings + images]
    lines.append('done: %d action(s)%s'
                 % (acted, ' (dry run)' if dry else ''))
    tool.emit(conf, {'dry_run': dry, 'actions': acted, 'ok': not left,
                     'findings': findings, 'images': images}, lines)
    return tool.EXIT_PROBLEMS if left else tool.EXIT_OK


def main(argv=None):
    return tool.run(body, argv, PROG, __doc__.splitlines()[0], EPILOG,
                    CLI_OPTS, as_root=False)


if __name__ == '__main__':
    sys.exit(main())
