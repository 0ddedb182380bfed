#!/bin/bash
#
# devstack plugin for glance-cinder-store: Glance stores of type cinder_plus.
#
# stack install      install the package into glance's environment, the
#                    rootwrap filter file and a sudoers entry
# stack post-config  glance-api.conf: the cinder_plus stores; cinder.conf:
#                    Cinder's clone paths for cinder:// images
# stack extra        the stores' volume types and the service project's
#                    volume quota; glance-cinder-store-check --attach-test
# unstack            glance-cinder-store-cleanup (detach what is left)
# clean              remove the state folder, sudoers entry and filters

# Save trace setting
_XTRACE_GCS=$(set +o | grep xtrace)
set -o xtrace

GLANCE_CINDER_PLUS_FILTERS=glance_cinder_plus.filters

# The configured stores, one "<store id> <backend>" line each; only the
# first one without multi-store.
function glance_cinder_plus_stores {
    local entry
    for entry in ${GLANCE_CINDER_PLUS_STORES//,/ }; do
        echo "${entry%%:*} ${entry#*:}"
        if [[ "$GLANCE_ENABLE_MULTIPLE_STORES" != "True" ]]; then
            return
        fi
    done
}

function glance_cinder_plus_volume_type {
    echo "${GLANCE_CINDER_PLUS_TYPE_PREFIX}$1"
}

# "a,b" plus "c" -> "a,b,c", without duplicates or empty items.
function _gcs_list_add {
    local list=$1 item=$2
    if [[ ",$list," == *",$item,"* ]]; then
        echo "$list"
    else
        echo "${list:+$list,}$item"
    fi
}

# The list without the items for which the predicate (a function) is true.
function _gcs_list_drop {
    local list=$1 predicate=$2 item result=""
    for item in ${list//,/ }; do
        if ! $predicate "$item"; then
            result=${result:+$result,}$item
        fi
    done
    echo "$result"
}

function install_glance_cinder_store {
    setup_develop "$GLANCE_CINDER_STORE_DIR"
    sudo install -d -o root -g root -m 755 "$GLANCE_CONF_DIR/rootwrap.d"
    sudo install -o root -g root -m 644 \
        "$GLANCE_CINDER_STORE_DIR/etc/rootwrap.d/$GLANCE_CINDER_PLUS_FILTERS" \
        "$GLANCE_CONF_DIR/rootwrap.d/"
}

# glance-api (as $STACK_USER) starts the privsep daemons of os-brick and of
# the driver with "sudo glance-rootwrap <rootwrap.conf> privsep-helper".
function configure_glance_cinder_store_rootwrap {
    local rootwrap_conf=$GLANCE_CONF_DIR/rootwrap.conf exec_dirs sudoers
    exec_dirs=$(iniget "$rootwrap_conf" DEFAULT exec_dirs)
    if [[ -n "$exec_dirs" ]]; then
        iniset -sudo "$rootwrap_conf" DEFAULT exec_dirs \
            "$(_gcs_list_add "$exec_dirs" "$GLANCE_BIN_DIR")"
    fi
    sudoers=$(mktemp)
    echo "$STACK_USER ALL = (root) NOPASSWD:" \
        "$GLANCE_BIN_DIR/glance-rootwrap $rootwrap_conf *" > "$sudoers"
    chmod 0440 "$sudoers"
    sudo chown root:root "$sudoers"
    sudo mv "$sudoers" "$GLANCE_CINDER_PLUS_SUDOERS"
    add_sudo_secure_path "$GLANCE_BIN_DIR"
}

# The options of one cinder_plus store in section $1.
function configure_glance_cinder_plus_store {
    local section=$1 store_id=$2 backend=$3
    local opt
    # "<option> <value>" lines; an empty value keeps the driver's default
    while read -r opt; do
        if [[ "$opt" == *" "* ]]; then
            iniset "$GLANCE_API_CONF" "$section" "${opt%% *}" "${opt#* }"
        fi
    done <<EOT
cinder_volume_type $(glance_cinder_plus_volume_type "$store_id")
cinder_catalog_info volumev3::publicURL
cinder_store_auth_address $KEYSTONE_SERVICE_URI_V3
cinder_store_user_name glance
cinder_store_password $SERVICE_PASSWORD
cinder_store_project_name $SERVICE_PROJECT_NAME
cinder_store_user_domain_name $SERVICE_DOMAIN_NAME
cinder_store_project_domain_name $SERVICE_DOMAIN_NAME
cinder_do_extend_attached $GLANCE_CINDER_PLUS_EXTEND_ATTACHED
rootwrap_config $GLANCE_CONF_DIR/rootwrap.conf
cinder_plus_state_dir $GLANCE_CINDER_PLUS_STATE_DIR
cinder_plus_attach_grace_period $GLANCE_CINDER_PLUS_GRACE_PERIOD
EOT
    if [[ "$backend" == nfs* ]]; then
        mkdir -p "$GLANCE_NFS_MOUNTPOINT"
        iniset "$GLANCE_API_CONF" "$section" cinder_mount_point_base \
            "$GLANCE_NFS_MOUNTPOINT"
    fi
}

function _gcs_is_cinder_scheme_store {
    # legacy "stores" items: the built-in driver also claims cinder://
    [[ "$1" == "cinder" || "$1" == "cinder_plus" ]]
}

function configure_glance_cinder_plus {
    local store_id backend enabled stores first=""
    mkdir -p "$GLANCE_CINDER_PLUS_STATE_DIR"
    if [[ "$GLANCE_ENABLE_MULTIPLE_STORES" == "True" ]]; then
        enabled=$(iniget "$GLANCE_API_CONF" DEFAULT enabled_backends)
        enabled=${enabled// /}
        while read -r store_id backend; do
            first=${first:-$store_id}
            enabled=$(_gcs_list_add "$enabled" "$store_id:cinder_plus")
            configure_glance_cinder_plus_store "$store_id" "$store_id" \
                "$backend"
            iniset "$GLANCE_API_CONF" "$store_id" store_description \
                "cinder_plus store on Cinder backend $backend"
        done < <(glance_cinder_plus_stores)
        iniset "$GLANCE_API_CONF" DEFAULT enabled_backends "$enabled"
        if [[ "$GLANCE_CINDER_PLUS_DEFAULT" == "True" ]]; then
            iniset "$GLANCE_API_CONF" glance_store default_backend "$first"
        fi
    else
        read -r store_id backend < <(glance_cinder_plus_stores)
        stores=$(iniget "$GLANCE_API_CONF" glance_store stores)
        stores=$(_gcs_list_drop "${stores// /}" _gcs_is_cinder_scheme_store)
        iniset "$GLANCE_API_CONF" glance_store stores \
            "$(_gcs_list_add "$stores" cinder_plus)"
        configure_glance_cinder_plus_store glance_store "$store_id" "$backend"
        if [[ "$GLANCE_CINDER_PLUS_DEFAULT" == "True" ]]; then
            iniset "$GLANCE_API_CONF" glance_store default_store cinder
        fi
    fi
}

# Cinder's clone paths for images on cinder:// stores.
function configure_cinder_for_glance_cinder_plus {
    local schemes store_id backend
    if [[ "$GLANCE_CINDER_PLUS_CLONE" != "True" ]]; then
        return
    fi
    schemes=$(iniget "$CINDER_CONF" DEFAULT allowed_direct_url_schemes)
    iniset "$CINDER_CONF" DEFAULT allowed_direct_url_schemes \
        "$(_gcs_list_add "${schemes// /}" cinder)"
    # Glance shows image locations only to the service role: without its own
    # [glance] credentials Cinder clones for admins only.
    iniset "$CINDER_CONF" glance auth_type password
    iniset "$CINDER_CONF" glance auth_url "$KEYSTONE_SERVICE_URI"
    iniset "$CINDER_CONF" glance username cinder
    iniset "$CINDER_CONF" glance password "$SERVICE_PASSWORD"
    iniset "$CINDER_CONF" glance project_name "$SERVICE_PROJECT_NAME"
    iniset "$CINDER_CONF" glance user_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$CINDER_CONF" glance project_domain_name "$SERVICE_DOMAIN_NAME"
    while read -r store_id backend; do
        iniset "$CINDER_CONF" "$backend" image_upload_use_cinder_backend True
        iniset "$CINDER_CONF" "$backend" image_upload_use_internal_tenant \
            "$GLANCE_CINDER_PLUS_INTERNAL_TENANT"
    done < <(glance_cinder_plus_stores)
    if [[ "$GLANCE_CINDER_PLUS_INTERNAL_TENANT" == "True" ]]; then
        configure_cinder_internal_tenant
    fi
}

# Needs Cinder's API: runs once the services are up.
function create_glance_cinder_plus_volume_types {
    local store_id backend vtype
    while read -r store_id backend; do
        vtype=$(glance_cinder_plus_volume_type "$store_id")
        if ! openstack --os-region-name="$REGION_NAME" volume type show \
                "$vtype" > /dev/null 2>&1; then
            openstack --os-region-name="$REGION_NAME" volume type create \
                --property volume_backend_name="$backend" "$vtype"
        fi
        if [[ "$GLANCE_CINDER_PLUS_MULTIATTACH" == "True" ]]; then
            openstack --os-region-name="$REGION_NAME" volume type set \
                --property multiattach="<is> True" "$vtype"
        fi
    done < <(glance_cinder_plus_stores)
    openstack --os-region-name="$REGION_NAME" quota set \
        --volumes "$GLANCE_CINDER_PLUS_VOLUME_QUOTA" "$SERVICE_PROJECT_NAME"
}

# A real attach round trip of each store (a 1 GiB volume, read-only).
function check_glance_cinder_store {
    "$GLANCE_BIN_DIR/glance-cinder-store-check" \
        --config-file "$GLANCE_API_CONF" --attach-test ||
        die $LINENO "glance-cinder-store-check failed"
}

function cleanup_glance_cinder_store_attachments {
    if [[ -x "$GLANCE_BIN_DIR/glance-cinder-store-cleanup" ]]; then
        "$GLANCE_BIN_DIR/glance-cinder-store-cleanup" \
            --config-file "$GLANCE_API_CONF" || true
    fi
}

function clean_glance_cinder_store {
    sudo rm -rf "$GLANCE_CINDER_PLUS_STATE_DIR"
    sudo rm -f "$GLANCE_CINDER_PLUS_SUDOERS" \
        "$GLANCE_CONF_DIR/rootwrap.d/$GLANCE_CINDER_PLUS_FILTERS"
}

if is_service_enabled glance && is_service_enabled cinder; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing glance-cinder-store"
        install_glance_cinder_store
        configure_glance_cinder_store_rootwrap
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        echo_summary "Configuring cinder_plus stores"
        configure_glance_cinder_plus
        configure_cinder_for_glance_cinder_plus
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        echo_summary "Creating the cinder_plus stores' volume types"
        create_glance_cinder_plus_volume_types
        check_glance_cinder_store
    fi

    if [[ "$1" == "unstack" ]]; then
        cleanup_glance_cinder_store_attachments
    fi

    if [[ "$1" == "clean" ]]; then
        clean_glance_cinder_store
    fi
fi

# Restore xtrace
$_XTRACE_GCS
