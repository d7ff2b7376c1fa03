#!/usr/bin/env bash
# Install bin-daemon on Raspberry Pi OS Bookworm (64-bit, Pi 4 or Pi 5) from this checkout.
#
#   sudo deploy/install.sh                 install or upgrade, enable and start the service
#   sudo deploy/install.sh --uninstall     remove the program, unit and firmware lines;
#                                          keep /etc/bin-daemon and /var/lib/bin-daemon
#   sudo deploy/install.sh --uninstall --purge   ... and those two, and the service user
#   deploy/install.sh --root DIR           stage the files into DIR instead of / (no root
#                                          needed; no apt-get, useradd, pip or systemctl)
#   deploy/install.sh --chroot             the real install in a Debian chroot that stands in
#                                          for a Pi (CI's arm64 stage, ci/arm64/): skips and
#                                          reports what needs a real Pi
#
# Safe to run again: an upgrade replaces the program and the unit, never the config.
set -euo pipefail

readonly SERVICE=bin-daemon
readonly SERVICE_USER=bin-daemon
readonly SERVICE_GROUPS=(gpio video)
readonly APT_PACKAGES=(
  python3-venv python3-pip      # the venv (made with --system-site-packages)
  python3-picamera2             # camera; brings python3-libcamera and libcamera's IPA
  python3-systemd               # journal fields and sd_notify, without building from source
  python3-lgpio                 # gpiozero's pin factory on Bookworm (Pi 4 and Pi 5)
  python3-cryptography          # model signatures (ed25519); pip then needs no wheel for it
  rpicam-apps-lite              # rpicam-hello --list-cameras, for checking the camera
)
# From the Raspberry Pi archive, not Debian's: --chroot (plain Debian) skips them.
readonly PI_ARCHIVE_PACKAGES=(python3-picamera2 python3-lgpio rpicam-apps-lite)
readonly OPT_DIR=/opt/bin-daemon
readonly VENV_DIR=$OPT_DIR/venv
readonly ETC_DIR=/etc/bin-daemon
readonly STATE_DIR=/var/lib/bin-daemon
readonly MODEL_STORE=$STATE_DIR/models
readonly UNIT_PATH=/etc/systemd/system/$SERVICE.service
readonly COMMAND_LINK=/usr/local/bin/bin-daemon
readonly FIRMWARE_CONFIG=/boot/firmware/config.txt
readonly MARK_BEGIN="# >>> bin-daemon: managed by deploy/install.sh, removed by --uninstall >>>"
readonly MARK_END="# <<< bin-daemon <<<"

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_DIR
ROOT=""          # "" = the real system; else the staging directory
MODE=install
PURGE=0
FORCE=0
START=1
CHROOT=0
REBOOT_NEEDED=0
WORK_DIR=""

info() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
staging() { [[ -n $ROOT ]]; }
# The path of an installed file: under the staging root when staging.
at() { printf '%s%s' "$ROOT" "$1"; }
skip() { note "skipped (staging into $ROOT): $*"; }
in_chroot() { ((CHROOT)); }
skip_chroot() { note "skipped (--chroot: needs a real Pi): $*"; }

usage() {
  sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  cat <<'EOF'
Options:
  --root DIR     stage into DIR instead of / (implies no apt-get, useradd, pip, systemctl)
  --uninstall    remove bin-daemon (config and state are kept unless --purge)
  --purge        with --uninstall: also remove /etc/bin-daemon, /var/lib/bin-daemon, the user
  --no-start     install and enable, but do not (re)start the service now
  --force        install on a machine that is not a Raspberry Pi (a test VM)
  --chroot       install into the Debian root this runs in, standing in for a Pi (CI):
                 implies --force and --no-start; skips the Raspberry Pi archive's packages
                 and systemctl daemon-reload/restart (no systemd running), and says so
  -h, --help     this text
EOF
}

parse_args() {
  while (($#)); do
    case $1 in
      --root)
        [[ $# -ge 2 && -n $2 ]] || die "--root needs a directory"
        mkdir -p "$2"
        ROOT=$(cd "$2" && pwd)
        [[ $ROOT != / ]] || ROOT=""
        shift
        ;;
      --uninstall) MODE=uninstall ;;
      --purge) PURGE=1 ;;
      --no-start) START=0 ;;
      --force) FORCE=1 ;;
      --chroot)
        CHROOT=1
        FORCE=1
        START=0
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
  done
  if ((PURGE)) && [[ $MODE != uninstall ]]; then
    die "--purge only goes with --uninstall"
  fi
}

# ------------------------------------------------------------------------------ checks

board_model() {
  if [[ -r /proc/device-tree/model ]]; then
    tr -d '\0' </proc/device-tree/model
  fi
}

preflight() {
  if staging; then
    info "Staging into $ROOT: files only; apt-get, useradd, pip and systemctl are skipped"
    return
  fi
  [[ $(id -u) -eq 0 ]] || die "run as root: sudo $0 $*"
  local model arch codename
  model=$(board_model)
  if [[ $model != "Raspberry Pi"* ]]; then
    if ((FORCE)); then
      warn "not a Raspberry Pi (${model:-no /proc/device-tree/model}); going on (--force)"
    else
      die "this is not a Raspberry Pi (${model:-no /proc/device-tree/model}). To look at what \
would be installed, stage it: $0 --root /tmp/bin-daemon-root; on a test VM add --force"
    fi
  elif [[ $model != "Raspberry Pi 4"* && $model != "Raspberry Pi 5"* ]]; then
    warn "$model: bin-daemon is made for a Pi 4 or Pi 5; a slower Pi sorts slower"
  fi
  # The userland decides which wheels pip needs: 32-bit Raspberry Pi OS on a Pi 4 or 5 runs
  # a 64-bit kernel (uname -m says aarch64) over armhf packages and a 32-bit Python.
  local userland
  arch=$(uname -m)
  userland=$(dpkg --print-architecture 2>/dev/null || printf '%s' "$arch")
  [[ $arch == aarch64 && $userland == arm64 ]] || die "this system runs $userland packages \
on an $arch kernel; bin-daemon needs 64-bit Raspberry Pi OS (aarch64, arm64 packages): its \
classifier (ai-edge-litert) has no 32-bit ARM (armv7l) build. Flash the 64-bit image with \
Raspberry Pi Imager"
  # shellcheck source=/dev/null
  codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-unknown}")
  [[ $codename == bookworm ]] || warn "made for Raspberry Pi OS Bookworm; this is '$codename'"
  command -v apt-get >/dev/null || die "apt-get not found: Raspberry Pi OS (Debian) needed"
  info "Installing on: ${model:-unknown board} ($arch, $codename)"
}

# ----------------------------------------------------------------------------- install

install_apt_packages() {
  info "Debian packages: ${APT_PACKAGES[*]}"
  if staging; then
    skip "apt-get install"
    return
  fi
  local packages=("${APT_PACKAGES[@]}") package
  if in_chroot; then
    skip_chroot "apt-get install ${PI_ARCHIVE_PACKAGES[*]} (Raspberry Pi archive)"
    packages=()
    for package in "${APT_PACKAGES[@]}"; do
      [[ " ${PI_ARCHIVE_PACKAGES[*]} " == *" $package "* ]] || packages+=("$package")
    done
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${packages[@]}"
}

create_user() {
  info "Service user '$SERVICE_USER' in groups ${SERVICE_GROUPS[*]}"
  if staging; then
    skip "useradd / usermod"
    return
  fi
  local group
  for group in "${SERVICE_GROUPS[@]}"; do
    getent group "$group" >/dev/null || groupadd --system "$group"
  done
  if ! getent passwd "$SERVICE_USER" >/dev/null; then
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
      --shell /usr/sbin/nologin --comment "smart bin daemon" "$SERVICE_USER"
  fi
  usermod --append --groups "$(
    IFS=,
    printf '%s' "${SERVICE_GROUPS[*]}"
  )" "$SERVICE_USER"
}

install_program() {
  info "Program: venv $VENV_DIR (--system-site-packages), bin-daemon from $REPO_DIR"
  install -d -m 0755 "$(at "$OPT_DIR")"
  [[ ! -f $REPO_DIR/README.md ]] || install -m 0644 "$REPO_DIR/README.md" "$(at "$OPT_DIR/README.md")"
  # 'bin-daemon' on the maintainer's PATH (sudo's secure_path has /usr/local/bin).
  install -d -m 0755 "$(at "$(dirname "$COMMAND_LINK")")"
  ln -sfn "$VENV_DIR/bin/bin-daemon" "$(at "$COMMAND_LINK")"
  if staging; then
    skip "python3 -m venv, pip install"
    return
  fi
  [[ -x $VENV_DIR/bin/python ]] || python3 -m venv --system-site-packages "$VENV_DIR"
  local wheels=$WORK_DIR/wheels
  "$VENV_DIR/bin/pip" wheel --quiet --no-deps --wheel-dir "$wheels" "$REPO_DIR"
  # numpy<2: apt's picamera2 stack (simplejpeg) is built against Bookworm's numpy 1.x.
  "$VENV_DIR/bin/pip" install --quiet --constraint "$REPO_DIR/deploy/constraints-pi.txt" \
    "$wheels"/bin_daemon-*.whl
  "$VENV_DIR/bin/pip" install --quiet --no-deps --force-reinstall "$wheels"/bin_daemon-*.whl
  "$VENV_DIR/bin/bin-daemon" --help >/dev/null ||
    die "the installed bin-daemon does not start: see the error above"
}

# The default config for this Pi: the package's default with the model store's 'current'.
default_config() {
  local source=$REPO_DIR/bin_daemon/default_config.yaml text
  if ! staging && text=$("$VENV_DIR/bin/bin-daemon" check-config --print-default 2>/dev/null); then
    printf '%s\n' "$text"
  else
    [[ -r $source ]] || die "$source missing: is this a complete bin-daemon checkout?"
    cat "$source"
  fi | sed -E "/^model:/,/^[^ #]/ s|^(  dir: )null .*|\\1$MODEL_STORE/current  # the model store: bin-daemon model status|"
}

install_config() {
  local config new
  config=$(at "$ETC_DIR/config.yaml")
  new=$WORK_DIR/config.yaml
  default_config >"$new"
  grep -q "^  dir: $MODEL_STORE/current" "$new" ||
    warn "could not point model.dir at $MODEL_STORE/current in the default config; set it by hand"
  install -d -m 0755 "$(at "$ETC_DIR")"
  if [[ ! -e $config ]]; then
    info "Config: $ETC_DIR/config.yaml (new)"
    install -m 0640 "$new" "$config"
  elif cmp -s "$new" "$config"; then
    info "Config: $ETC_DIR/config.yaml unchanged"
    rm -f "$config.new"
  else
    info "Config: $ETC_DIR/config.yaml kept; this version's default is in config.yaml.new"
    note "compare: diff $ETC_DIR/config.yaml $ETC_DIR/config.yaml.new"
    install -m 0640 "$new" "$config.new"
  fi
  if ! staging; then
    chgrp "$SERVICE_USER" "$config"
    [[ ! -e $config.new ]] || chgrp "$SERVICE_USER" "$config.new"
  fi
}

install_state_dirs() {
  info "State: $STATE_DIR/{models,spool,events}"
  local dir
  for dir in "$STATE_DIR" "$MODEL_STORE" "$STATE_DIR/spool" "$STATE_DIR/events"; do
    install -d -m 0755 "$(at "$dir")"
    staging || chown "$SERVICE_USER:$SERVICE_USER" "$dir"
  done
}

seed_model_store() {
  if [[ -L $(at "$MODEL_STORE/current") ]]; then
    info "Model: the store already has one (bin-daemon model status)"
    return
  fi
  info "Model: installing the shipped model into $MODEL_STORE (with its self-test)"
  if staging; then
    skip "bin-daemon model install (needs the venv)"
    return
  fi
  local shipped
  shipped=$("$VENV_DIR/bin/python" -c \
    'from bin_daemon.paths import shipped_models_dir; print(shipped_models_dir())')
  "$VENV_DIR/bin/bin-daemon" model install "$shipped" --store "$MODEL_STORE" --no-reload
}

install_unit() {
  info "Unit: $UNIT_PATH"
  install -d -m 0755 "$(dirname "$(at "$UNIT_PATH")")"
  install -m 0644 "$REPO_DIR/systemd/$SERVICE.service" "$(at "$UNIT_PATH")"
  if staging; then
    skip "systemctl daemon-reload, enable"
    return
  fi
  if in_chroot; then
    skip_chroot "systemctl daemon-reload (no systemd running); enabling offline"
  else
    systemctl daemon-reload
  fi
  systemctl enable --quiet "$SERVICE.service"
}

# Print config.txt with our block replaced in place by BLOCK_FILE's lines (appended after a
# blank line if it had none), or with the block and the blank line before it removed when
# BLOCK_FILE is empty. Lines an owner put after the block stay after it.
splice_fragment() {
  local config=$1 block_file=$2
  awk -v begin="$MARK_BEGIN" -v end="$MARK_END" -v block_file="$block_file" '
    function put_block(   line) {
      if (block_file == "") return
      while ((getline line < block_file) > 0) lines[++n] = line
      close(block_file)
      done = 1
    }
    $0 == begin {
      if (block_file == "" && n > 0 && lines[n] == "") n--
      put_block(); inside = 1; next
    }
    inside { if ($0 == end) inside = 0; next }
    { lines[++n] = $0 }
    END {
      if (inside) exit 3
      if (!done && block_file != "") { lines[++n] = ""; put_block() }
      for (i = 1; i <= n; i++) print lines[i]
    }
  ' "$config" || die "$config: the '$MARK_BEGIN' line has no '$MARK_END' after it; \
mend the file by hand (the block is the one bin-daemon adds), then run this again"
}

# Replace FILE's content with NEW's if they differ (keeping a backup); false if unchanged.
write_if_changed() {
  local file=$1 new=$2
  ! cmp -s "$new" "$file" || return 1
  cp -p "$file" "$file.bin-daemon-backup"
  cat "$new" >"$file" # in place: keeps the file's owner and mode
}

apply_firmware() {
  local config new
  config=$(at "$FIRMWARE_CONFIG")
  if [[ ! -f $config ]]; then
    if ! staging && [[ -f /boot/config.txt ]]; then
      die "/boot/config.txt but no $FIRMWARE_CONFIG: this is Bullseye or older; \
bin-daemon needs Raspberry Pi OS Bookworm"
    fi
    warn "$FIRMWARE_CONFIG not found: boot settings not applied (see firmware/)"
    return
  fi
  new=$WORK_DIR/config.txt
  {
    printf '%s\n' "$MARK_BEGIN"
    cat "$REPO_DIR/firmware/config-fragment.txt"
    printf '%s\n' "$MARK_END"
  } >"$WORK_DIR/block"
  splice_fragment "$config" "$WORK_DIR/block" >"$new"
  if write_if_changed "$config" "$new"; then
    info "Firmware: bin-daemon settings written to $FIRMWARE_CONFIG (reboot needed)"
    note "the file as it was: $FIRMWARE_CONFIG.bin-daemon-backup"
    REBOOT_NEEDED=1
  else
    info "Firmware: $FIRMWARE_CONFIG already has the bin-daemon settings"
  fi
}

start_service() {
  if staging; then
    return
  fi
  if in_chroot; then
    skip_chroot "systemctl restart $SERVICE (no systemd running), reboot for the firmware"
    info "Done (in a chroot: not started)"
  elif ((REBOOT_NEEDED)); then
    info "Done. Reboot to apply the boot settings; the service starts by itself: sudo reboot"
  elif ((START)); then
    systemctl restart "$SERVICE.service"
    info "Done. bin-daemon is running: systemctl status bin-daemon; journalctl -u bin-daemon -f"
  else
    info "Done (not started): sudo systemctl start bin-daemon"
  fi
}

do_install() {
  install_apt_packages
  create_user
  install_program
  install_config
  install_state_dirs
  seed_model_store
  apply_firmware
  install_unit
  start_service
  if staging; then
    info "Staged into $ROOT"
  fi
}

# --------------------------------------------------------------------------- uninstall

remove_firmware() {
  local config new
  config=$(at "$FIRMWARE_CONFIG")
  [[ -f $config ]] || return 0
  new=$WORK_DIR/config.txt
  splice_fragment "$config" "" >"$new"
  if write_if_changed "$config" "$new"; then
    info "Firmware: bin-daemon settings removed from $FIRMWARE_CONFIG (reboot to apply)"
  fi
}

do_uninstall() {
  info "Removing bin-daemon"
  if staging; then
    skip "systemctl disable --now"
  elif [[ -e $UNIT_PATH ]]; then
    systemctl disable --now --quiet "$SERVICE.service" || true
  fi
  rm -f "$(at "$UNIT_PATH")"
  staging || systemctl daemon-reload
  rm -rf "$(at "$OPT_DIR")"
  if [[ -L $(at "$COMMAND_LINK") ]]; then
    rm -f "$(at "$COMMAND_LINK")"
  fi
  remove_firmware
  if ((PURGE)); then
    info "Purging $ETC_DIR and $STATE_DIR (config, models, spool, events)"
    rm -rf "$(at "$ETC_DIR")" "$(at "$STATE_DIR")"
    if staging; then
      skip "userdel $SERVICE_USER"
    elif getent passwd "$SERVICE_USER" >/dev/null; then
      userdel "$SERVICE_USER"
    fi
  else
    info "Kept $ETC_DIR (config) and $STATE_DIR (models, spool, events): --purge removes them"
  fi
}

main() {
  parse_args "$@"
  WORK_DIR=$(mktemp -d)
  trap 'rm -rf "$WORK_DIR"' EXIT
  preflight "$@"
  if [[ $MODE == uninstall ]]; then
    do_uninstall
  else
    do_install
  fi
}

main "$@"
