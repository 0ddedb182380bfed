"""The glance_store driver: add, get, get_size and delete images on volumes.

Orchestration only.  Cinder calls live in cinder.py, attaching in attach.py,
the byte loops in transfer.py.  Volumes follow the built-in driver's
conventions (name ``image-<id>``, metadata ``glance_image_id``,
``image_size``, ``image_owner``, read-only flag), so either driver reads the
other's images and Cinder's clone fast paths work on ours.
"""

import contextlib
import errno
import logging
import math
import os
import time

from glance_store import capabilities
import glance_store.driver
from glance_store import exceptions
from oslo_utils import units

from glance_cinder_store import attach
from glance_cinder_store import cinder
from glance_cinder_store import heal
from glance_cinder_store import holders
from glance_cinder_store import location
from glance_cinder_store import options
from glance_cinder_store import pool
from glance_cinder_store import privileged
from glance_cinder_store import transfer
from glance_cinder_store import warm

#: seconds without uploads or downloads on the host before a new image is
#: warmed up
WARM_UP_QUIET = 1.0

# glance_store looks the location class up by this name in this module.
StoreLocation = location.StoreLocation

LOG = logging.getLogger(__name__)

TYPE_NAME = 'cinder_plus'
#: Volume metadata key present while an upload is in progress.
UPLOAD_MARK = holders.UPLOAD_MARK


def image_size(volume):
    """Bytes of image on ``volume``; whole volume if Cinder made it."""
    return int(volume.metadata.get('image_size', volume.size * units.Gi))


class CinderStore(glance_store.driver.Store):
    """Images as Cinder volumes, attached to this host with os-brick."""

    _CAPABILITIES = (capabilities.BitMasks.READ_RANDOM |
                     capabilities.BitMasks.WRITE_ACCESS |
                     capabilities.BitMasks.DRIVER_REUSABLE)
    OPTIONS = options.OPTIONS
    EXAMPLE_URL = 'cinder://<store-id>/<volume-id>'

    def __init__(self, conf, backend=None):
        super().__init__(conf, backend=backend)
        self._url_prefix = 'cinder://%s' % (backend or '')
        if backend:
            self.store_conf = glance_store.driver.BackendGroupConfiguration(
                self.OPTIONS, backend, conf=conf)
        else:
            self.store_conf = conf.glance_store
        self.clients = cinder.CinderClientFactory(self.store_conf)
        self._settling = cinder.Settling()
        self._refusals = cinder.Refusals()   # of the service credentials
        self._warm_ups = None
        self._attachments = None
        self._healing = None
        self._pool = None

    @property
    def name(self):
        return self.backend_group or TYPE_NAME

    def get_schemes(self):
        # 'cinder' because Cinder and Glance only understand cinder://
        # locations; our type name because glance_store finds a store by
        # looking its type up as a scheme.
        return (location.SCHEME, TYPE_NAME)

    def get_store_location_class(self):
        return location.StoreLocation

    @property
    def attachments(self):
        if self._attachments is None:
            self._attachments = attach.HostAttachments(self.store_conf)
        return self._attachments

    def volumes(self, context=None):
        """The Cinder calls of this store, as the service or ``context``."""
        conf = self.store_conf
        key = self.clients.service_key
        return cinder.Volumes(
            self.clients.client(context),
            conf.cinder_state_transition_timeout,
            conf.cinder_attachment_retry_attempts,
            once=self.clients.client(context, idempotent=False),
            busy_min_wait=3 * conf.cinder_plus_warm_check_interval,
            settling=self._settling, service_key=key,
            # a user's token may be allowed what the service user is not
            refusals=self._refusals if key else None)

    def configure_add(self):
        try:
            self.attachments
        except exceptions.BadStoreConfiguration as e:
            # Said at start-up; every add/get repeats it until it is fixed.
            LOG.error('store %s: %s', self.name, e)
        else:
            self._start_healing()
            self._start_pool()
        if self.store_conf.cinder_plus_prestart_privsep:
            privileged.start_in_background(self.store_conf.rootwrap_config,
                                           ours=os.getuid() != 0)
        volume_type = self.store_conf.cinder_volume_type
        if not volume_type or not self.clients.uses_service_credentials:
            return
        try:
            self.volumes().volume_type(volume_type)
        except Exception as e:
            # Cinder may simply not be up yet: warn, and let add() fail
            # with a clear error if the type really is missing.
            LOG.warning('store %s: cannot confirm that volume type %r '
                        'exists in Cinder: %s', self.name, volume_type, e)

    def _start_healing(self):
        """Reconcile this host's leftovers now and then periodically."""
        interval = self.store_conf.cinder_plus_self_heal_interval
        if self._healing is not None or not interval:
            return
        if not self.clients.uses_service_credentials:
            LOG.info('store %s: no self-healing without cinder_store_* '
                     'service credentials; glance-cinder-store-cleanup '
                     'undoes what crashed processes leave', self.name)
            return
        self._healing = heal.Periodic(self, interval).start()

    def _start_pool(self):
        """Keep volumes ready for small adds, when the operator asks."""
        size = self.store_conf.cinder_plus_volume_pool_size
        if self._pool is not None or not size:
            return
        if not self.clients.uses_service_credentials:
            LOG.warning('store %s: cinder_plus_volume_pool_size needs the '
                        'cinder_store_* service credentials; no volume pool',
                        self.name)
            return
        self._pool = pool.VolumePool(
            self.name, self.store_conf.cinder_volume_type, self.volumes,
            size, self.store_conf.cinder_plus_upload_heartbeat_interval,
            attachments=self.attachments)
        self._pool.start()

    def close(self):
        """Stop this store's background work and delete its pool volumes."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._healing is not None:
            self._healing.stop()
            self._healing = None

    # -- add --------------------------------------------------------------

    @glance_store.driver.back_compat_add
    @capabilities.check
    def add(self, image_id, image_file, image_size, hashing_algo,
            context=None, verifier=None):
        """Write the image onto a new volume ``image-<id>`` of this store.

        No check for an existing ``image-<id>`` volume, like the built-in
        driver, and no Cinder call spent on one.  Such volumes are
        legitimate: the same image in another store (another volume type:
        import to several stores, copy-image), or the volume of a failed
        upload still being deleted (or left marked by a crash) when the
        upload is retried.  A real duplicate, a second complete copy in
        *this* store, is something Glance never asks for: an upload moves
        the image queued -> saving with a conditional update, imports hold
        the image's import lock, copy-image refuses (or, with all_stores,
        skips) stores the image is already in, and image ids are never
        reused.  A listing could not close the race anyway (Cinder names
        are not unique), and non-admin listings may ignore ``name=``.
        """
        with self.attachments.activity.running():
            return self._add(image_id, image_file, image_size, hashing_algo,
                             context, verifier)

    def _add(self, image_id, image_file, image_size, hashing_algo, context,
             verifier):
        volumes = self.volumes(context)
        name = 'image-%s' % image_id
        metadata = {'glance_image_id': image_id,
                    'image_size': str(image_size)}
        if context is not None and context.project_id:
            metadata['image_owner'] = context.project_id
        size_gb = max(1, math.ceil(image_size / units.Gi))
        mark = holders.UploadMark.mine()
        claimed = None
        if self._pool is not None:
            claimed = self._pool.claim(size_gb)
        if claimed is not None:
            volume = claimed.volume     # renamed image-<id> once written
        else:
            volume = self._create_volume(
                volumes, name, size_gb,
                dict(metadata, **mark.metadata()))
        heartbeat = holders.Heartbeat(
            mark, lambda text: volumes.set_metadata(volume,
                                                    {UPLOAD_MARK: text}),
            self.store_conf.cinder_plus_upload_heartbeat_interval).start()
        try:
            if claimed is None and volume.status != 'available':
                volume = volumes.wait_for(volume, 'available',
                                          ('creating',))
            result, on_device = self._write(
                volumes, volume, image_file, image_size, hashing_algo,
                verifier, metadata, heartbeat, claimed, name)
        except BaseException as e:
            heartbeat.stop()
            if claimed is not None:
                claimed.release()   # normally _write's, unless it never ran
            LOG.error('store %s: upload of image %s to volume %s failed: %s',
                      self.name, image_id, volume.id, e)
            self._discard(volumes, volume, heartbeat.mark)
            raise _translated_os_error(e)
        LOG.info('store %s: image %s written to volume %s (%d bytes, %d '
                 'zeroed without writing)', self.name, image_id, volume.id,
                 result.size, result.zeroed_bytes)
        if on_device:
            self._warm_after_upload(volume, result.size)
        url = StoreLocation(
            {'volume_id': volume.id}, self.conf,
            backend_group=self.backend_group).get_uri()
        return (url, result.size, result.checksum, result.multihash,
                {'store': self.backend_group} if self.backend_group else {})

    def _warm_after_upload(self, volume, size):
        """Attach a new image read-only and fill its page cache, meanwhile.

        Its first download (often a boot right after the upload) then needs
        no attach and reads memory, like the file store's first download.
        Only for volumes written through a device of this host (librbd
        has no page cache to fill), and not for volumes that cannot be
        attached twice: a reader on another host would wait for us.
        """
        limit = self.store_conf.cinder_plus_warm_after_upload * units.Mi
        if not (0 < size <= limit and getattr(volume, 'multiattach', False)
                and self.clients.uses_service_credentials
                and self.attachments.keep_page_cache):
            return
        if self._warm_ups is None:
            # once the host's uploads and downloads are over: a burst of
            # uploads would otherwise pay for its first ones' warm-ups
            activity = self.attachments.activity
            self._warm_ups = warm.WarmUps(
                self.store_conf.cinder_plus_warm_attachments,
                self.store_conf.cinder_plus_attach_grace_period,
                lambda timeout: activity.wait_quiet(WARM_UP_QUIET, timeout),
                self._warm_up)
        self._warm_ups.add(volume.id, size)

    def _warm_up(self, volume_id, size):
        try:
            volumes = self.volumes()
            volume = volumes.get(volume_id)
            with self.attachments.attach(volumes, volume, 'ro',
                                         fill_bytes=size):
                pass    # the fill follows, if the attachment stays warm
        except Exception as e:
            # deleted meanwhile, say: its first download attaches then
            LOG.info('store %s: new image volume %s not kept warm: %s',
                     self.name, volume_id, e)

    def _create_volume(self, volumes, name, size_gb, metadata):
        volume_type = self.store_conf.cinder_volume_type
        try:
            return volumes.create(size_gb, name, metadata, volume_type)
        except exceptions.NotFound as e:
            if volume_type and 'type' in str(e).lower():
                # Glance answers this one with 503 and the message, and puts
                # the image back to 'queued'.
                raise exceptions.StorageWriteDenied(
                    'store %s: volume type %r (cinder_volume_type) does not '
                    'exist in Cinder' % (self.name, volume_type))
            raise

    def _write(self, volumes, volume, image_file, image_size, hashing_algo,
               verifier, metadata, heartbeat, claimed=None, name=None):
        conf = self.store_conf
        with contextlib.ExitStack() as stack:
            if claimed is not None and claimed.attached is not None:
                # the pool attached it ahead of time: ours to let go of
                attached = claimed.attached
                stack.callback(claimed.release)
            else:
                attached = stack.enter_context(
                    self.attachments.attach(volumes, volume, 'rw'))
            _check_device(attached.target, volume, image_size)
            grower = None
            if not image_size:
                grower = _Grower(self, volumes, volume, stack, attached)
            result = transfer.write_image(
                image_file, attached.target, image_size,
                capacity=volume.size * units.Gi,
                grow=grower, hashing_algo=hashing_algo, verifier=verifier,
                chunk_size=conf.cinder_plus_io_chunk_size,
                queue_depth=conf.cinder_plus_io_queue_depth,
                skip_zeroes=conf.cinder_plus_skip_zeroes)
            # The bytes are on stable storage: record the final metadata
            # (which drops the upload mark) while the detach runs.
            metadata['image_size'] = str(result.size)
            heartbeat.stop()    # no refresh may bring the mark back
            if claimed is not None:     # still named and marked as pool's
                finishing = cinder.in_background(volumes.rename, volume,
                                                 name, metadata)
            else:
                finishing = cinder.in_background(volumes.replace_metadata,
                                                 volume, metadata)
        finishing.result()
        volumes.set_readonly(volume)    # Cinder wants it detached first
        # written to a device (or file) of this host: a page cache to fill
        return result, bool(attached.connection.local_path)

    def _discard(self, volumes, volume, mark):
        """Delete a volume whose upload failed, or mark it for the healer."""
        try:
            volumes.delete(volume.id)
            return
        except Exception:
            LOG.exception('store %s: could not delete the volume %s of a '
                          'failed upload; marking it failed for the '
                          'self-healing pass', self.name, volume.id)
        try:
            volumes.set_metadata(volume,
                                 {UPLOAD_MARK: mark.given_up().format()})
        except Exception as e:
            LOG.error('store %s: could not mark volume %s failed either '
                      '(%s); it is deleted once this process is gone',
                      self.name, volume.id, e)

    # -- get / get_size -----------------------------------------------------

    @capabilities.check
    def get(self, location, offset=0, chunk_size=None, context=None):
        volume_id = location.store_location.volume_id
        volumes = self.volumes(context)
        volume = self._warm_volume(volume_id)
        if volume is None:
            try:
                volume = volumes.get(volume_id)
            except exceptions.NotFound as e:
                raise self._not_visible(e, volume_id, context)
        self._check_image_volume(volume, location)
        size = image_size(volume)
        if offset < 0 or offset > size:
            raise exceptions.BackendException(
                'offset %d is outside image volume %s of %d bytes'
                % (offset, volume_id, size))
        length = size - offset
        if chunk_size:
            length = min(length, chunk_size)
        return (self._read(volumes, volume, offset, length),
                chunk_size or size)

    def _warm_volume(self, volume_id):
        """The volume of a warm attachment on this host: no Cinder call.

        Only with the store's own credentials: with the user's token, the
        Cinder GET is also the check that the user may see the volume.
        """
        if not self.clients.uses_service_credentials:
            return None
        return self.attachments.warm_volume(volume_id)

    def _read(self, volumes, volume, offset, length):
        """Attach now, read as the caller iterates.

        Attaching before get() returns lets Glance answer a failure (the
        volume is held by another host and cannot be attached twice, say)
        with an error status instead of a 200 and a truncated body.
        """
        if length == 0:
            return iter(())
        holding = contextlib.ExitStack()
        holding.enter_context(self.attachments.activity.running())
        direct = self.store_conf.cinder_plus_direct_reads
        try:
            attached = holding.enter_context(self.attachments.attach(
                volumes, volume, 'ro',
                fill_bytes=image_size(volume) if direct else 0))
        except BaseException:
            holding.close()
            raise
        direct = direct and not attached.page_cached
        chunks = transfer.read_range(
            attached.target, offset, length,
            chunk_size=self.store_conf.cinder_plus_io_chunk_size,
            queue_depth=self.store_conf.cinder_plus_io_queue_depth,
            direct=direct, leave_direct=attached.read_by_others,
            cached=attached.page_cached)
        if (not direct and offset == 0 and length == image_size(volume)
                and attached.mark_page_cached is not None):
            # a whole buffered read: later readers find it in memory
            chunks = _then(chunks, attached.mark_page_cached)
        return _Reading(holding, chunks)

    def _check_image_volume(self, volume, location):
        """Refuse a volume that is not an image volume of this store.

        Glance passes no image id to get and delete, so what we can check
        is: the volume has this store's volume type, and it is an image
        volume (``glance_image_id``, the image's when Glance gave us its
        id).  Cinder's upload-to-image by clone sets ``glance_image_id``
        only after adding the location, so until then its volume named
        ``image-<id>`` with an ``image_owner`` passes too.
        """
        why = None
        wanted_type = self.store_conf.cinder_volume_type
        image_id = getattr(location, 'image_id', None)
        metadata = getattr(volume, 'metadata', None) or {}
        owner = metadata.get('glance_image_id')
        if wanted_type and volume.volume_type != wanted_type:
            why = 'its volume type %s is not this store\'s (%s)' % (
                volume.volume_type, wanted_type)
        elif owner is None:
            name = getattr(volume, 'name', '') or ''
            if not (name.startswith('image-') and 'image_owner' in metadata
                    and (image_id is None or name == 'image-' + image_id)):
                why = 'it has no glance_image_id: not an image volume'
        elif image_id is not None and owner != image_id:
            why = 'it belongs to image %s' % owner
        if why:
            raise exceptions.NotFound(
                'store %s: volume %s is not an image volume of this store '
                '(%s): refusing to attach, read or delete it'
                % (self.name, volume.id, why))

    def _not_visible(self, error, volume_id, context):
        """Say why a reader may not see the volume in per-user mode."""
        if self.clients.uses_service_credentials or context is None:
            return error
        return exceptions.NotFound(
            'store %s: volume %s is not visible to project %s: without '
            'cinder_store_* credentials (per-user mode) an image volume '
            'lives in its owner\'s project and only that project and admins '
            'can read it; share images through a store with service '
            'credentials (%s)' % (self.name, volume_id, context.project_id,
                                  error))

    def get_size(self, location, context=None):
        volume_id = location.store_location.volume_id
        try:
            volume = self.volumes(context).get(volume_id)
            self._check_image_volume(volume, location)
            return image_size(volume)
        except exceptions.NotFound:
            raise
        except Exception:
            LOG.exception('store %s: cannot read the size of volume %s',
                          self.name, volume_id)
            return 0

    # -- delete -------------------------------------------------------------

    @capabilities.check
    def delete(self, location, context=None):
        volume_id = location.store_location.volume_id
        volumes = self.volumes(context)
        # NotFound (gone, or not an image volume of ours): Glance drops the
        # location and leaves the volume alone
        volume = volumes.get(volume_id)
        self._check_image_volume(volume, location)
        if any(a.get('host_name') != self.attachments.host
               for a in volume.attachments):
            # Other hosts may keep it warm (idle): ask them to let go.
            volumes.request_release(volume_id)
        deadline = (time.monotonic() +
                    self.store_conf.cinder_state_transition_timeout)
        while True:
            volume = self._wait_unattached(volumes, volume_id)
            try:
                volumes.delete(volume.id)
                return
            except exceptions.BackendException as e:
                # A reader of this host (a download, a new image's warm-up)
                # may have attached it between the look and the delete.
                if (time.monotonic() < deadline and
                        self._attached_again(volumes, volume_id)):
                    LOG.info('store %s: volume %s was attached again '
                             'before its delete; waiting for it once more',
                             self.name, volume_id)
                    continue
                raise exceptions.InUseByStore(
                    'store %s: Cinder refused to delete volume %s: %s'
                    % (self.name, volume_id, e))

    def _attached_again(self, volumes, volume_id):
        try:
            volume = volumes.get(volume_id)
        except Exception:
            return False
        return bool(volume.attachments) or volume.status in (
            'reserved', 'attaching', 'in-use', 'detaching')

    def _wait_unattached(self, volumes, volume_id):
        """Wait, bounded, for the volume's readers to finish with it.

        Each round first lets go of this host's attachment if nobody holds
        it any more: a download here that ends during the wait leaves it
        warm, and nothing else would detach it before the wait gives up.
        """
        timeout = self.store_conf.cinder_state_transition_timeout
        delay, waited = 0.1, 0.0
        while True:
            self.attachments.release_idle(volumes, volume_id)
            volume = volumes.get(volume_id)
            if not volume.attachments:
                return volume
            if waited >= timeout:
                hosts = sorted({a.get('host_name') or '?'
                                for a in volume.attachments})
                raise exceptions.InUseByStore(
                    'store %s: volume %s is still attached on %s after %ss'
                    % (self.name, volume_id, ', '.join(hosts), timeout))
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 2.0)

    # -- Glance's store assignment -----------------------------------------

    def is_image_associated_with_store(self, context, volume_id):
        """True when the volume's type is this store's volume type."""
        try:
            volumes = self.volumes(context)
            volume = volumes.get(volume_id)
            wanted = self.store_conf.cinder_volume_type
            if not wanted:
                wanted = volumes.default_volume_type().name
            return volume.volume_type == wanted
        except Exception as e:
            LOG.debug('store %s: volume %s not associated: %s', self.name,
                      volume_id, e)
            return False


#: The class's earlier name, for code and entry points that still use it.
Store = CinderStore


def _check_device(target, volume, image_size):
    """Refuse to write unless the device is the volume we just attached."""
    size = transfer.device_size(target)
    expected = volume.size * units.Gi
    if size < expected or size >= expected + units.Gi:
        raise exceptions.BackendException(
            'attached device for volume %s has %d bytes but the volume is '
            '%d GiB: refusing to write to what may be another disk'
            % (volume.id, size, volume.size))
    if image_size and size < image_size:
        raise exceptions.StorageFull(
            'volume %s (%d bytes) is smaller than the image (%d bytes)'
            % (volume.id, size, image_size))


class _Reading:
    """The chunks of a read whose attachment is already held.

    The attachment is released when the chunks run out, fail, or are
    closed (Glance closes a download the client abandoned) or dropped.
    """

    def __init__(self, holding, chunks):
        self._holding = holding
        self._chunks = chunks

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def close(self):
        holding, self._holding = self._holding, None
        if holding is not None:
            try:
                self._chunks.close()
            finally:
                holding.close()

    def __del__(self):
        self.close()


def _then(chunks, done):
    """Yield ``chunks``, then call ``done()``: not if closed before the end."""
    yield from chunks
    try:
        done()
    except Exception:
        LOG.exception('recording a finished read failed')


def _translated_os_error(error):
    if isinstance(error, OSError):
        if error.errno in (errno.ENOSPC, errno.EFBIG):
            return exceptions.StorageFull(str(error))
        if error.errno in (errno.EACCES, errno.EPERM):
            return exceptions.StorageWriteDenied(str(error))
    return error


def grown_size_gb(size_gb, needed_bytes, factor, max_step_gb):
    """The size to grow a volume of ``size_gb`` to, for unknown sizes.

    Grows by ``factor`` (at least 1 GiB, at most ``max_step_gb`` a step),
    so at the end at most ``1 - 1/factor`` of the volume is unused once it
    is past a few GiB (25% for the default 1.33), in about
    log(N)/log(factor) extends for N GiB.  Never less than ``needed_bytes``.
    """
    step = math.floor(size_gb * (factor - 1) + 1e-9)
    step = max(1, min(step, max_step_gb))
    return max(math.ceil(needed_bytes / units.Gi), size_gb + step)


class _Grower:
    """Grows a volume being written with data of unknown size.

    Grows the volume by ``cinder_plus_extend_factor`` (see
    ``grown_size_gb``).  Online extend keeps the
    attachment; when the operator says the backend cannot extend attached
    volumes (``cinder_do_extend_attached = False``) we detach, extend and
    attach again.
    """

    def __init__(self, store, volumes, volume, stack, attached):
        self.store = store
        self.volumes = volumes
        self.volume = volume
        self.stack = stack
        self.attached = attached

    def __call__(self, needed_bytes):
        conf = self.store.store_conf
        size_gb = self.volume.size
        new_gb = grown_size_gb(size_gb, needed_bytes,
                               conf.cinder_plus_extend_factor,
                               conf.cinder_plus_max_extend_step_gb)
        online = (conf.cinder_do_extend_attached and
                  self.store.clients.online_extend_supported)
        LOG.info('volume %s: growing %d -> %d GiB (%s)', self.volume.id,
                 size_gb, new_gb, 'online' if online else 'offline')
        if online:
            self.attached.wait_completed()      # Cinder extends in-use ones
            self.volumes.extend(self.volume, new_gb)
            self.volume = self.volumes.wait_for(self.volume, 'in-use',
                                                ('extending',))
            self.attached.extend()
        else:
            self.stack.close()
            self.volumes.extend(self.volume, new_gb)
            self.volume = self.volumes.wait_for(self.volume, 'available',
                                                ('extending',))
            self.attached = self.stack.enter_context(
                self.store.attachments.attach(self.volumes, self.volume,
                                              'rw'))
        target = self.attached.target
        _check_device(target, self.volume, 0)
        return self.volume.size * units.Gi, target
