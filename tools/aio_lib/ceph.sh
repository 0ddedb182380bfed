# A one-node, userspace Ceph for tools/aio (sourced by it; uses its say,
# die, start_bg, stop_services, pid_of, install_apt and variables).
#
# One mon (v2 3300 + v1 6789), one mgr and one bluestore OSD on a sparse
# file, all on 127.0.0.1; pool "volumes" (size 1) for Cinder's [ceph]
# backend.  Daemons run as root under $RUN/ceph-*.pid like every other aio
# service; their data lives in $CEPH_DIR.  Clients (cinder-volume as root,
# glance-api as glance) use /etc/ceph/ceph.conf and the client.cinder
# keyring in /etc/ceph, as an operator would set them up: os-brick reads
# /etc/ceph/<cluster>.client.<user>.keyring because Cinder does not send
# the key.  Admin commands use $CEPH_DIR/ceph.conf (admin keyring, root
# only).
#
# AIO_CEPH=0 leaves Ceph out of the cloud altogether.

AIO_CEPH=${AIO_CEPH:-1}
CEPH_DIR=$DATA/ceph
CEPH_ADMIN_CONF=$CEPH_DIR/ceph.conf
CEPH_CLIENT_CONF=/etc/ceph/ceph.conf
CEPH_CLIENT_KEYRING=/etc/ceph/ceph.client.cinder.keyring
CEPH_OSD_SIZE=${AIO_CEPH_OSD_SIZE:-20G}
CEPH_POOL=volumes
CEPH_PACKAGES="ceph-mon ceph-osd ceph-mgr ceph-common python3-rados python3-rbd"
CEPH_SERVICES="ceph-mon ceph-mgr ceph-osd"   # start order
CEPH_MARK="# written by tools/aio (glance-cinder-store all-in-one cloud)"

ceph_enabled() { [ "$AIO_CEPH" = 1 ]; }

ceph_admin() { timeout 20 ceph --conf "$CEPH_ADMIN_CONF" "$@"; }

# ------------------------------------------------------------------ install

ceph_install() {  # the Debian packages (run in the background of install_all)
    ceph_enabled || return 0
    install_apt ceph $CEPH_PACKAGES
}

ceph_python_path() {  # ceph_python_path VENV: let VENV import rados and rbd
    # python3-rados/-rbd exist only as Debian modules for /usr/bin/python3
    # (not on PyPI): a folder holding links to just those two, on the path.
    ceph_enabled || return 0
    local venv=$1 dir=$AIO_ROOT/ceph-python site so
    [ -x "$venv/bin/python" ] || return 0
    mkdir -p "$dir"
    for so in /usr/lib/python3/dist-packages/rados.cpython-*.so \
              /usr/lib/python3/dist-packages/rbd.cpython-*.so; do
        [ -e "$so" ] || die "python3-rados / python3-rbd are not installed"
        ln -sfn "$so" "$dir/$(basename "$so")"
    done
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$dir" >"$site/gcs-aio-ceph.pth"
    "$venv/bin/python" -c 'import rados, rbd' ||
        die "$venv cannot import rados/rbd (python version differs from /usr/bin/python3?)"
}

# ------------------------------------------------------------------ bootstrap

ceph_write_conf() {
    local fsid=$1
    cat >"$CEPH_ADMIN_CONF" <<EOF
$CEPH_MARK
[global]
fsid = $fsid
mon_initial_members = a
mon_host = [v2:$AIO_IP:3300,v1:$AIO_IP:6789]
public_addr = $AIO_IP
cluster_addr = $AIO_IP
ms_bind_ipv6 = false
ms_bind_port_min = 6800
ms_bind_port_max = 6830
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = $RUN/ceph
admin_socket = $RUN/ceph/\$cluster-\$name.asok
log_file = $LOGS/ceph/\$cluster-\$name.log
crash_dir = $CEPH_DIR/crash
log_to_syslog = false
err_to_syslog = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 5
mon_data_avail_crit = 2
mon_max_pg_per_osd = 500

[client]
keyring = $CEPH_DIR/\$cluster.\$name.keyring

[mon]
mon_data = $CEPH_DIR/mon/\$cluster-\$id
keyring = \$mon_data/keyring

[mgr]
mgr_data = $CEPH_DIR/mgr/\$cluster-\$id
keyring = \$mgr_data/keyring

[osd]
osd_data = $CEPH_DIR/osd/\$cluster-\$id
keyring = \$osd_data/keyring
osd_objectstore = bluestore
osd_memory_target = 1073741824
bluestore_block_create = true
bluestore_block_size = $(numfmt --from=iec "$CEPH_OSD_SIZE")
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
EOF
}

ceph_mkfs_mon() {  # keys, monmap and the mon's store
    local tmp=$CEPH_DIR/tmp fsid=$1
    ceph-authtool --create-keyring "$tmp/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$CEPH_DIR/ceph.client.admin.keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool --create-keyring "$CEPH_DIR/ceph.client.cinder.keyring" --gen-key -n client.cinder \
        --cap mon 'profile rbd' --cap osd "profile rbd pool=$CEPH_POOL" \
        --cap mgr "profile rbd pool=$CEPH_POOL" >/dev/null
    ceph-authtool --create-keyring "$tmp/mgr.keyring" --gen-key -n mgr.x \
        --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *' >/dev/null
    local k
    for k in "$CEPH_DIR/ceph.client.admin.keyring" "$CEPH_DIR/ceph.client.cinder.keyring" "$tmp/mgr.keyring"; do
        ceph-authtool "$tmp/mon.keyring" --import-keyring "$k" >/dev/null
    done
    chmod 600 "$CEPH_DIR"/*.keyring
    monmaptool --create --fsid "$fsid" --addv a "[v2:$AIO_IP:3300,v1:$AIO_IP:6789]" "$tmp/monmap" >/dev/null
    ceph-mon --mkfs -i a --monmap "$tmp/monmap" --keyring "$tmp/mon.keyring" -c "$CEPH_ADMIN_CONF" \
        >"$LOGS/ceph/mon.mkfs.log" 2>&1 || die "ceph-mon --mkfs failed (see $LOGS/ceph/mon.mkfs.log)"
    mkdir -p "$CEPH_DIR/mgr/ceph-x"
    cp "$tmp/mgr.keyring" "$CEPH_DIR/mgr/ceph-x/keyring"
}

ceph_mkfs_osd() {  # needs the mon: registers osd.0 and formats its block file
    local tmp=$CEPH_DIR/tmp uuid key id
    uuid=$(uuidgen); key=$(ceph-authtool --gen-print-key)
    printf '{"cephx_secret": "%s"}' "$key" >"$tmp/osd.json"
    id=$(ceph_admin osd new "$uuid" 0 -i "$tmp/osd.json") || die "ceph osd new failed"
    [ "$id" = 0 ] || die "ceph osd new returned '$id', expected 0"
    mkdir -p "$CEPH_DIR/osd/ceph-0"
    ceph-authtool --create-keyring "$CEPH_DIR/osd/ceph-0/keyring" --name osd.0 --add-key "$key" >/dev/null
    truncate -s "$CEPH_OSD_SIZE" "$CEPH_DIR/osd/ceph-0/block"   # sparse
    ceph-osd -i 0 --mkfs --osd-uuid "$uuid" -c "$CEPH_ADMIN_CONF" >"$LOGS/ceph/osd.mkfs.log" 2>&1 ||
        die "ceph-osd --mkfs failed (see $LOGS/ceph/osd.mkfs.log)"
}

ceph_create_pool() {
    ceph_admin osd pool create "$CEPH_POOL" 8 8 replicated --size 1 --autoscale-mode off >/dev/null 2>&1 ||
        ceph_admin osd pool create "$CEPH_POOL" 8 8 replicated >/dev/null
    ceph_admin osd pool set "$CEPH_POOL" size 1 --yes-i-really-mean-it >/dev/null 2>&1
    timeout 60 rbd --conf "$CEPH_ADMIN_CONF" pool init "$CEPH_POOL" || die "rbd pool init failed"
    # clone v2: no snapshot protection needed, no "not using v2 clone API"
    ceph_admin osd set-require-min-compat-client mimic >/dev/null 2>&1 || true
}

ceph_write_client_files() {  # /etc/ceph as an operator sets up a client host
    [ ! -e "$CEPH_CLIENT_CONF" ] || grep -q "^$CEPH_MARK" "$CEPH_CLIENT_CONF" ||
        die "$CEPH_CLIENT_CONF exists and is not ours"
    getent group glance >/dev/null || die "no glance group (setup_host first)"
    mkdir -p /etc/ceph
    cat >"$CEPH_CLIENT_CONF.tmp" <<EOF
$CEPH_MARK
[global]
fsid = $(awk '/^fsid = / {print $3}' "$CEPH_ADMIN_CONF")
mon_host = [v2:$AIO_IP:3300,v1:$AIO_IP:6789]
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
ms_bind_ipv6 = false
log_to_syslog = false
log_file = /dev/null
EOF
    chmod 644 "$CEPH_CLIENT_CONF.tmp"; mv "$CEPH_CLIENT_CONF.tmp" "$CEPH_CLIENT_CONF"
    # the key: root (cinder-volume) and group glance (glance-api), nobody else
    install -m 640 -o root -g glance "$CEPH_DIR/ceph.client.cinder.keyring" "$CEPH_CLIENT_KEYRING"
}

ceph_wait_io() {  # PGs read "unknown" for a while although I/O works: probe
    local i
    for i in $(seq 1 120); do
        if echo probe | timeout 10 rados --conf "$CEPH_ADMIN_CONF" -p "$CEPH_POOL" put aio.probe - 2>/dev/null &&
           timeout 10 rados --conf "$CEPH_ADMIN_CONF" -p "$CEPH_POOL" rm aio.probe 2>/dev/null; then
            return 0
        fi
        pid_of ceph-osd >/dev/null || die "ceph-osd died (see $LOGS/ceph-osd.log, $LOGS/ceph/)"
        sleep 0.5
    done
    die "pool $CEPH_POOL not usable after 60 s"
}

ceph_up() {  # idempotent: bootstrap once, (re)start what is not running
    ceph_enabled || return 0
    local t0=$SECONDS fsid new=""
    mkdir -p "$CEPH_DIR" "$RUN/ceph" "$LOGS/ceph" "$CEPH_DIR/crash"
    chmod 700 "$CEPH_DIR"
    if [ ! -e "$CEPH_DIR/.bootstrapped" ]; then
        stop_services $CEPH_SERVICES   # a half-done earlier bootstrap
        rm -rf "$CEPH_DIR"/{mon,mgr,osd,tmp} "$CEPH_DIR"/*.keyring
        mkdir -p "$CEPH_DIR"/{tmp,mon,mgr,osd}
        fsid=$(uuidgen)
        ceph_write_conf "$fsid"
        ceph_mkfs_mon "$fsid"
        new=1
    fi
    start_bg ceph-mon ceph-mon -f -i a -c "$CEPH_ADMIN_CONF"
    local i
    for i in $(seq 1 60); do
        ceph_admin mon stat >/dev/null 2>&1 && break
        pid_of ceph-mon >/dev/null || die "ceph-mon died (see $LOGS/ceph-mon.log, $LOGS/ceph/)"
        sleep 0.5
    done
    ceph_admin mon stat >/dev/null 2>&1 || die "ceph-mon does not answer"
    start_bg ceph-mgr ceph-mgr -f -i x -c "$CEPH_ADMIN_CONF"
    [ -z "$new" ] || ceph_mkfs_osd
    start_bg ceph-osd ceph-osd -f -i 0 -c "$CEPH_ADMIN_CONF"
    if [ -n "$new" ]; then
        ceph_create_pool
        rm -rf "$CEPH_DIR/tmp"
        touch "$CEPH_DIR/.bootstrapped"
    fi
    ceph_write_client_files
    ceph_wait_io
    say "ceph ready in $((SECONDS - t0)) s (pool $CEPH_POOL; $CEPH_CLIENT_CONF, $CEPH_CLIENT_KEYRING)"
}

ceph_up_bg() {  # start ceph_up in the background; ceph_wait collects it
    CEPH_UP_PID=""
    ceph_enabled || return 0
    ceph_up >"$LOGS/ceph-up.log" 2>&1 &
    CEPH_UP_PID=$!
}

ceph_wait() {
    [ -n "${CEPH_UP_PID:-}" ] || return 0
    wait "$CEPH_UP_PID" || { tail -5 "$LOGS/ceph-up.log"; die "ceph did not come up (see $LOGS/ceph-up.log)"; }
    CEPH_UP_PID=""
    tail -1 "$LOGS/ceph-up.log"
}

# ------------------------------------------------------------------ down/status

ceph_down() {  # ceph_down [--purge]: stop by pid (reverse order)
    stop_services ceph-osd ceph-mgr
    stop_services ceph-mon
    if [ "${1:-}" = --purge ]; then
        rm -rf "$CEPH_DIR" "$AIO_ROOT/ceph-python" "$RUN/ceph" "$LOGS/ceph"
        if [ -e "$CEPH_CLIENT_CONF" ] && grep -q "^$CEPH_MARK" "$CEPH_CLIENT_CONF"; then
            rm -f "$CEPH_CLIENT_CONF" "$CEPH_CLIENT_KEYRING"
        fi
        rm -f "$VENV"/lib/python3*/site-packages/gcs-aio-ceph.pth
    fi
}

ceph_status() {  # one line like the other services; fails if ceph is down
    ceph_enabled || return 0
    local pids="" s pid health
    for s in $CEPH_SERVICES; do
        pid=$(pid_of "$s") || pid=-
        pids="$pids${pids:+,}$pid"
    done
    if health=$(ceph_admin health 2>&1) && [ "${health%% *}" != HEALTH_ERR ]; then
        printf '%-17s %-10s %s\n' ceph "pid $pids" "ok   $(echo "$health" | head -1)"
    else
        printf '%-17s %-10s %s\n' ceph "pid $pids" "FAIL $(echo "$health" | head -1)"
        return 1
    fi
}

# ------------------------------------------------------------------ config

ceph_cinder_backend() {  # the [ceph] section of cinder.conf
    ceph_enabled || return 0
    cat <<EOF

[ceph]
volume_driver = cinder.volume.drivers.rbd.RBDDriver
volume_backend_name = ceph
rbd_cluster_name = ceph
rbd_ceph_conf = $CEPH_CLIENT_CONF
rbd_pool = $CEPH_POOL
rbd_user = cinder
rbd_flatten_volume_from_snapshot = false
rbd_max_clone_depth = 5
rbd_exclusive_cinder_pool = true
rados_connect_timeout = 5
report_discard_supported = true
image_upload_use_cinder_backend = true
image_upload_use_internal_tenant = true
image_volume_cache_enabled = false
EOF
}

ceph_backends() { ceph_enabled && echo ",ceph" || true; }
