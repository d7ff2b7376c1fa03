#!/usr/bin/env bash
# CI's arm64 stage (`make test-arm64`): bin-daemon on the Pi's own userland, Debian bookworm
# arm64, run under qemu-user emulation in a chroot.
#
#   ci/arm64/stage.sh                  the whole stage (root needed)
#   ci/arm64/stage.sh --break-dep PKG  the same, with PKG added to the project's dependencies
#                                      in the chroot's copy: shows how a dependency with no
#                                      aarch64 build makes the stage fail (docs/ARM64.md)
#   ci/arm64/stage.sh --model DIR      the same with another model folder in place of models/
#                                      (a candidate model, or before one is committed)
#   ci/arm64/stage.sh --diagnose LOG   print the stage's one-line reason for a pip log
#
# 1. Builds (or takes from the cache) a debootstrap'd bookworm arm64 root and an armhf one.
#    Cache: $BIN_DAEMON_ARM64_CACHE (default /var/cache/bin-daemon-arm64), keyed by a hash
#    of what goes into a root; a missing cache means a build from nothing.
# 2. Runs deploy/install.sh --chroot in a throwaway overlay of the arm64 root: apt-get, the
#    service user, the venv, pip (aarch64 wheels from PyPI), the config, the model store
#    with the shipped model's self-test, systemctl enable. Pi-only steps are reported.
# 3. On arm64: check-config, classify --json on tests/data/samples, run --hardware fake
#    (classify with --no-site: the model alone, whatever site store the machine has).
# 4. Compares the arm64 classifications with this machine's (ci/arm64/golden.py).
# 5. Runs install.sh in the armhf root: it must refuse 32-bit Raspberry Pi OS by name.
# Mounts (/proc, /sys, /dev, the overlay) are always undone, on failure too.
# One line a step: "arm64: STEP ... ok (N s)", "... SKIPPED (why)" or "... FAILED: why".
# Logs: build/arm64/ (or $ARM64_LOG_DIR).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO
readonly CACHE=${BIN_DAEMON_ARM64_CACHE:-/var/cache/bin-daemon-arm64}
readonly LOG_DIR=${ARM64_LOG_DIR:-$REPO/build/arm64}
readonly SUITE=bookworm
# What goes into each root; part of the cache key. arm64: what Raspberry Pi OS has (systemd)
# and the Debian packages install.sh asks for, so its apt-get step has little to do.
include_for() {
  case $1 in
    arm64) echo python3,python3-venv,python3-pip,python3-systemd,systemd,ca-certificates ;;
    armhf) echo ca-certificates ;; # only install.sh's refusal runs there
  esac
}
readonly ROOT_RECIPE=3 # bump to rebuild every cached root
readonly SRC_IN_CHROOT=/root/bin-daemon-src
readonly VENV_BIN=/opt/bin-daemon/venv/bin
readonly SAMPLES=tests/data/samples
readonly MODEL_INPUTS=build/model-inputs # the samples as the model sees them (PNG)
# The CPU qemu emulates: a Pi 4's (cortex-a72); classify runs on a Pi 5's (cortex-a76) too.
# Not qemu's default "max": with its SVE/SME/i8mm, qemu 7.2 gives XNNPACK wrong int8 results
# (every sample "cardboard 0.57"), which no Pi has. See docs/ARM64.md.
readonly PI4_CPU=cortex-a72 PI5_CPU=cortex-a76
QEMU_CPU_MODEL=$PI4_CPU

PASSED=0
FAILED=0
SKIPPED=0
RUN_DIR=""
BREAK_DEP=""
MODEL_DIR=$REPO/models
REASON=""

# ----------------------------------------------------------------------------- helpers

log_file() { printf '%s/%s.log' "$LOG_DIR" "$(tr -c 'a-zA-Z0-9\n' - <<<"$1")"; }

# The reason a step gives for its result (read by step()).
reason() { printf '%s' "$*" >"$RUN_DIR/reason"; }

# step NAME FUNCTION [ARGS]: run it in a subshell with errexit (a failing command fails the
# step) and its output in its own log; one line on stdout. The function may call reason and
# returns 0 (ok), 3 (skipped) or anything else (failed).
step() {
  local name=$1 start=$SECONDS rc log
  shift
  log=$(log_file "$name")
  : >"$RUN_DIR/reason"
  printf 'arm64: %s ... ' "$name"
  set +e
  (
    set -e
    "$@"
  ) >"$log" 2>&1 </dev/null
  rc=$?
  set -e
  REASON=$(cat "$RUN_DIR/reason")
  if ((rc == 0)); then
    PASSED=$((PASSED + 1))
    printf 'ok (%d s)%s\n' $((SECONDS - start)) "${REASON:+: $REASON}"
  elif ((rc == 3)); then
    SKIPPED=$((SKIPPED + 1))
    printf 'SKIPPED (%s)\n' "$REASON"
  else
    FAILED=$((FAILED + 1))
    [[ -n $REASON ]] || REASON="exit $rc; last lines of $log:"
    printf 'FAILED: %s (%d s)\n' "$REASON" $((SECONDS - start))
    if [[ $REASON == *"last lines of"* ]]; then tail -n 15 "$log" | sed 's/^/    /'; fi
  fi
  return "$rc"
}

skipped() {
  SKIPPED=$((SKIPPED + 1))
  printf 'arm64: %s ... SKIPPED (%s)\n' "$1" "$2"
}

# Unmount everything at or under DIR, deepest first.
unmount_under() {
  local dir=$1 target
  [[ -n $dir ]] || return 0
  while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" || true
  done < <(awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts |
    sort -r)
}

cleanup() {
  local rc=$?
  if [[ -n $RUN_DIR ]]; then
    unmount_under "$RUN_DIR"
    if awk -v d="$RUN_DIR" 'index($2, d) == 1 {found = 1} END {exit !found}' /proc/self/mounts; then
      echo "arm64: cleanup ... FAILED: mounts left under $RUN_DIR" >&2
      rc=1
    else
      rm -rf "$RUN_DIR"
    fi
  fi
  shopt -s nullglob
  local dir
  for dir in "$CACHE"/build.*; do
    unmount_under "$dir"
    rm -rf "$dir"
  done
  exit "$rc"
}

# pip's words for a requirement it could not satisfy -> one line naming the package.
diagnose() {
  local log=$1 package
  package=$(sed -n -E \
    -e 's/.*No matching distribution found for ([A-Za-z0-9_.-]+).*/\1/p' \
    -e 's/.*Could not find a version that satisfies the requirement ([A-Za-z0-9_.-]+).*/\1/p' \
    "$log" | head -n 1)
  if [[ -n $package ]]; then
    printf 'arm64 stage: no aarch64 build of %s (pip: no matching distribution)\n' "$package"
    return 0
  fi
  package=$(sed -n -E \
    -e 's/.*Failed building wheel for ([A-Za-z0-9_.-]+).*/\1/p' \
    -e 's/.*Failed to build ([A-Za-z0-9_.-]+).*/\1/p' \
    -e 's/.*Failed to build installable wheels for some pyproject.toml based projects \(([^)]+)\).*/\1/p' \
    "$log" | head -n 1)
  if [[ -n $package ]]; then
    printf 'arm64 stage: no aarch64 build of %s (pip tried to compile it and failed)\n' "$package"
    return 0
  fi
  return 1
}

debian_mirror() {
  local url
  url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '$1 == "deb" && $0 ~ /bookworm/ && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}')
  [[ -n $url ]] || url=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '/^URIs:/ && $2 !~ /security/ && $2 ~ /debian/ {print $2; exit}')
  printf '%s' "${url:-http://deb.debian.org/debian}"
}

qemu_for() { case $1 in arm64) echo qemu-aarch64 ;; armhf) echo qemu-arm ;; esac }

# --------------------------------------------------------------------------- the steps

step_host_tools() {
  local missing=() tool
  for tool in debootstrap update-binfmts; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [[ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P || -x /usr/bin/qemu-aarch64-static ]] ||
    missing+=(qemu-user-static)
  ((${#missing[@]})) || return 0
  if ! command -v apt-get >/dev/null; then
    reason "missing ${missing[*]} and no apt-get"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends qemu-user-static debootstrap binfmt-support
  reason "installed qemu-user-static debootstrap binfmt-support"
}

step_binfmt() {
  local arch name
  if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  for arch in arm64 armhf; do
    name=$(qemu_for $arch)
    update-binfmts --enable "$name" || true
    if ! grep -qx enabled "/proc/sys/fs/binfmt_misc/$name" 2>/dev/null; then
      reason "binfmt handler $name not registered (is qemu-user-static installed?)"
      return 1
    fi
    # F: the kernel holds the interpreter open, so no qemu binary is needed in the chroots
    grep -q '^flags: .*F' "/proc/sys/fs/binfmt_misc/$name" || {
      reason "binfmt handler $name lacks the F flag"
      return 1
    }
  done
}

# The cached root for ARCH: its path says what went into it.
root_dir() {
  local arch=$1 include key
  include=$(include_for "$arch")
  key=$(printf '%s\n' "$ROOT_RECIPE" "$SUITE" "$arch" "$(debian_mirror)" "$include" |
    sha256sum | cut -c1-16)
  printf '%s/root-%s-%s' "$CACHE" "$arch" "$key"
}

# Build the root for ARCH, unless the cache has it.
step_root() {
  local arch=$1 include mirror dir tmp key
  include=$(include_for "$arch")
  mirror=$(debian_mirror)
  dir=$(root_dir "$arch")
  key=${dir##*-}
  if [[ -f $dir.complete ]]; then
    reason "cached, $dir"
    return 0
  fi
  rm -rf "$dir" "$dir.complete"
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/build.XXXXXX")
  echo "debootstrap --arch=$arch --variant=minbase --include=$include $SUITE $tmp/root $mirror"
  debootstrap --arch="$arch" --variant=minbase --include="$include" "$SUITE" "$tmp/root" "$mirror"
  unmount_under "$tmp"
  chroot "$tmp/root" apt-get clean
  mv "$tmp/root" "$dir"
  rm -rf "$tmp"
  touch "$dir.complete"
  # older keys of this arch are dead weight
  find "$CACHE" -maxdepth 1 -name "root-$arch-*" ! -name "root-$arch-$key*" -exec rm -rf {} +
  reason "built from nothing, $dir ($(du -sh "$dir" | cut -f1))"
}

# A throwaway root at $RUN_DIR/NAME/merged: an overlay on the cached one, with /proc, /sys,
# /dev, the network settings, pip's settings and cache, and a copy of this checkout.
make_run_root() {
  local lower=$1 name=$2 merged file
  merged=$RUN_DIR/$name/merged
  [[ -f $REPO/deploy/install.sh && -f $lower/etc/debian_version ]] ||
    { echo "not a checkout ($REPO) or not a root ($lower)" >&2; return 1; }
  mkdir -p "$RUN_DIR/$name/upper" "$RUN_DIR/$name/work" "$merged"
  mount -t overlay overlay \
    -o "lowerdir=$lower,upperdir=$RUN_DIR/$name/upper,workdir=$RUN_DIR/$name/work" "$merged"
  mount -t proc proc "$merged/proc"
  # /sys: a stand-in with a Pi's four CPUs, not this machine's sysfs. ai-edge-litert's
  # cpuinfo reads the x86 CPU topology there and crashes (SIGSEGV in Interpreter()) under
  # qemu; with no /sys at all it only warns. On a Pi, /sys is the Pi's own.
  mount -t tmpfs -o mode=0755 sysfs-stand-in "$merged/sys"
  mkdir -p "$merged/sys/devices/system/cpu"
  for file in present possible online; do echo 0-3 >"$merged/sys/devices/system/cpu/$file"; done
  mount -o remount,ro "$merged/sys"
  mount --bind /dev "$merged/dev"
  mount -t tmpfs -o mode=1777 tmpfs "$merged/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$merged/dev/pts" || true
  mkdir -p "$CACHE/pip-cache" "$merged/root/.cache/pip"
  mount --bind "$CACHE/pip-cache" "$merged/root/.cache/pip"
  # the host's resolver, CA bundle and pip settings (index, cert, timeout; not local paths)
  cp -L /etc/resolv.conf "$merged/etc/resolv.conf"
  if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp -L /etc/ssl/certs/ca-certificates.crt "$merged/etc/ssl/certs/ca-certificates.crt"
  fi
  if [[ -f /etc/pip.conf ]]; then cp -L /etc/pip.conf "$merged/etc/pip.conf"; fi
  # the checkout as install.sh sees it on a Pi: the project's files, not its venv or caches
  mkdir -p "$merged$SRC_IN_CHROOT"
  tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./build \
    --exclude='*/__pycache__' --exclude=./.pytest_cache --exclude=./.ruff_cache \
    --exclude=./runs --exclude=./.cache -cf - . | tar -C "$merged$SRC_IN_CHROOT" -xf -
  if [[ $MODEL_DIR != "$REPO/models" ]]; then
    rm -rf "$merged$SRC_IN_CHROOT/models"
    cp -r "$MODEL_DIR" "$merged$SRC_IN_CHROOT/models"
  fi
}

# in_root ROOT CMD...: run CMD in the chroot with a clean environment plus pip's settings.
in_root() {
  local root=$1 var
  shift
  local env=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive)
  [[ -z $QEMU_CPU_MODEL ]] || env+=("QEMU_CPU=$QEMU_CPU_MODEL")
  for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_CERT PIP_DEFAULT_TIMEOUT \
    PIP_DISABLE_PIP_VERSION_CHECK PIP_RETRIES http_proxy https_proxy no_proxy HTTP_PROXY \
    HTTPS_PROXY NO_PROXY; do
    # file:// indexes and local paths of this machine mean nothing in the chroot
    if [[ -n ${!var:-} && ${!var} != *file:* ]]; then env+=("$var=${!var}"); fi
  done
  chroot "$root" /usr/bin/env -i "${env[@]}" "$@"
}

step_prepare_arm64() {
  make_run_root "$(root_dir arm64)" arm64
  if [[ -n $BREAK_DEP ]]; then
    sed -i -E "0,/^dependencies = \[/s//dependencies = [\n    \"$BREAK_DEP\",/" \
      "$ARM$SRC_IN_CHROOT/pyproject.toml"
    grep -n "$BREAK_DEP" "$ARM$SRC_IN_CHROOT/pyproject.toml"
    reason "with $BREAK_DEP added to the dependencies (--break-dep)"
  fi
  in_root "$ARM" uname -m | grep -qx aarch64 || {
    reason "uname -m in the chroot is not aarch64"
    return 1
  }
}

step_install() {
  local log=$LOG_DIR/install.sh.log rc=0
  in_root "$ARM" bash "$SRC_IN_CHROOT/deploy/install.sh" --chroot >"$log" 2>&1 || rc=$?
  cat "$log"
  if ((rc)); then
    reason "$(diagnose "$log" ||
      echo "install.sh exit $rc: $(grep -m1 -E '^error:|ERROR:' "$log" || tail -n1 "$log")")"
    printf " (log: %s)" "${log#"$REPO"/}" >>"$RUN_DIR/reason"
    return 1
  fi
  reason "$(in_root "$ARM" "$VENV_BIN/python" -c 'import sys, platform, numpy, cv2, ai_edge_litert
from importlib.metadata import version
print(f"Python {platform.python_version()} {platform.machine()}, numpy {numpy.__version__}, "
      f"opencv {cv2.__version__}, ai-edge-litert {version(\"ai-edge-litert\")}")')"
}

# The steps install.sh skipped or could not do in a chroot, one line each.
report_install_skips() {
  local line
  [[ -f $LOG_DIR/install.sh.log ]] || return 0
  while read -r line; do
    skipped "install.sh: ${line#*: }" "needs a real Pi"
  done < <(sed -n -E 's/^ *skipped \(--chroot: needs a real Pi\): (.*)/x: \1/p' "$LOG_DIR/install.sh.log")
  if grep -q 'firmware/config.txt not found' "$LOG_DIR/install.sh.log"; then
    skipped "install.sh: firmware fragment into /boot/firmware/config.txt" \
      "no /boot/firmware in a plain Debian root; tests/test_deploy_install.py stages it"
  fi
}

step_installed_files() {
  local path
  for path in /opt/bin-daemon/venv/bin/bin-daemon /usr/local/bin/bin-daemon \
    /etc/bin-daemon/config.yaml /etc/systemd/system/bin-daemon.service \
    /etc/systemd/system/multi-user.target.wants/bin-daemon.service \
    /var/lib/bin-daemon/models/current; do
    [[ -e $ARM$path || -L $ARM$path ]] || {
      reason "$path missing after install.sh"
      return 1
    }
  done
  in_root "$ARM" id bin-daemon
  in_root "$ARM" "$VENV_BIN/bin-daemon" model status --store /var/lib/bin-daemon/models || true
  reason "venv, command link, config, unit enabled, user $(in_root "$ARM" id -nG bin-daemon | tr ' ' ,), model store"
}

step_check_config() {
  in_root "$ARM" /usr/local/bin/bin-daemon check-config --config /etc/bin-daemon/config.yaml
}

have_model() { compgen -G "$MODEL_DIR/*.tflite" >/dev/null; }

# classify on arm64: $1 the CPU, $2 "ref" for TFLite's reference kernels instead of XNNPACK
step_classify_arm64() {
  local cpu=$1 kernels=${2:-} flag="" out
  out=$LOG_DIR/classify-arm64-$cpu${kernels:+-$kernels}.json
  [[ $kernels == ref ]] && flag=--reference-kernels
  QEMU_CPU_MODEL=$cpu
  in_root "$ARM" bash -c "cd $SRC_IN_CHROOT && /usr/local/bin/bin-daemon classify --json --no-site $flag \
    --config /etc/bin-daemon/config.yaml $SAMPLES/*/*.jpg" >"$out"
  [[ -d $ARM$SRC_IN_CHROOT/$MODEL_INPUTS ]] || {
    reason "no model inputs: the x86 step writes them"
    return 1
  }
  in_root "$ARM" bash -c "cd $SRC_IN_CHROOT && /usr/local/bin/bin-daemon classify --json --no-site $flag \
    --config /etc/bin-daemon/config.yaml $MODEL_INPUTS/*/*.png" >"${out%.json}-inputs.json"
  reason "$(grep -c '"image"' "$out") images, $(grep -c '"image"' "${out%.json}-inputs.json") model inputs"
}

step_classify_x86() {
  have_model || {
    reason "no model in models/ yet"
    return 3
  }
  # the Pi's library versions (deploy/constraints-pi.txt: numpy<2, so opencv 4.11), so that
  # only the machine differs; the dev venv has numpy 2 and opencv 5
  local venv=$RUN_DIR/x86-venv
  "${PYTHON:-python3.11}" -m venv "$venv"
  "$venv/bin/pip" install --quiet --constraint "$REPO/deploy/constraints-pi.txt" "$REPO"
  (cd "$REPO" && "$venv/bin/bin-daemon" classify --json --no-site --model "$MODEL_DIR" $SAMPLES/*/*.jpg) \
    >"$LOG_DIR/classify-x86.json"
  (cd "$REPO" && "$venv/bin/bin-daemon" classify --json --no-site --reference-kernels --model "$MODEL_DIR" \
    $SAMPLES/*/*.jpg) >"$LOG_DIR/classify-x86-ref.json"
  # the model's input tensors as PNGs, in the arm64 checkout too: the kernels-only comparison
  local inputs=$ARM$SRC_IN_CHROOT/$MODEL_INPUTS
  rm -rf "$inputs"
  (cd "$REPO" && "$venv/bin/python" ci/arm64/model_inputs.py --model "$MODEL_DIR" "$inputs" \
    $SAMPLES/*/*.jpg)
  "$venv/bin/bin-daemon" classify --json --no-site --model "$MODEL_DIR" "$inputs"/*/*.png \
    >"$LOG_DIR/classify-x86-inputs.json"
  "$venv/bin/bin-daemon" classify --json --no-site --reference-kernels --model "$MODEL_DIR" \
    "$inputs"/*/*.png >"$LOG_DIR/classify-x86-ref-inputs.json"
  reason "$("$venv/bin/python" -c 'import numpy, cv2; print(f"numpy {numpy.__version__}, opencv {cv2.__version__}")')"
}

# golden check: $1 the CPU, $2 "ref" for the reference-kernel pair. Labels equal on both
# sets, and scores within:
# - on the model-size PNG inputs (identical tensors on both machines, so only the kernels
#   differ): the reference kernels (portable C++) 0 steps, XNNPACK 1 step
#   (ARM64_GOLDEN_MAX_STEPS can loosen that pair while a new model's drift is investigated);
# - on the JPEG samples (the whole path, with OpenCV's resize): ARM64_GOLDEN_PIPELINE_STEPS
#   (default 16). OpenCV's area resize is float code, vectorised differently on x86 and ARM:
#   at a non-dyadic ratio (a 384 px square to 320 or 352 px) a few percent of pixels differ
#   by one level, which moves a borderline image's scores by a few steps: 4-7 with the
#   320 px model, 10 with the 352 px one (docs/ARM64.md). Labels must still be equal.
step_golden() {
  local cpu=$1 kernels=${2:-} rc=0 steps=${ARM64_GOLDEN_MAX_STEPS:-1} suffix line
  local pipeline_steps=${ARM64_GOLDEN_PIPELINE_STEPS:-16}
  suffix=${kernels:+-$kernels}
  [[ $kernels == ref ]] && steps=0
  [[ -s $LOG_DIR/classify-arm64-$cpu$suffix-inputs.json && -s $LOG_DIR/classify-x86$suffix-inputs.json ]] || {
    reason "needs both classifications"
    return 3
  }
  "$REPO/.venv/bin/python" "$REPO/ci/arm64/golden.py" --model "$MODEL_DIR" --max-steps "$steps" \
    "$LOG_DIR/classify-x86$suffix-inputs.json" "$LOG_DIR/classify-arm64-$cpu$suffix-inputs.json" \
    >"$RUN_DIR/golden" || rc=$?
  "$REPO/.venv/bin/python" "$REPO/ci/arm64/golden.py" --model "$MODEL_DIR" \
    --max-steps "$pipeline_steps" "$LOG_DIR/classify-x86$suffix.json" \
    "$LOG_DIR/classify-arm64-$cpu$suffix.json" >"$RUN_DIR/golden-pipeline" || rc=$?
  cat "$RUN_DIR/golden" "$RUN_DIR/golden-pipeline"
  line=$(tail -n 1 "$RUN_DIR/golden")
  reason "model inputs: ${line#golden: }; JPEG samples: $(tail -n 1 "$RUN_DIR/golden-pipeline" | sed 's/^golden: //')"
  return "$rc"
}

step_run_fake() {
  have_model || {
    reason "no model in models/ yet"
    return 3
  }
  # as the service user, as the unit runs it (with a copy of the samples it may read)
  cp -r "$ARM$SRC_IN_CHROOT/$SAMPLES" "$ARM/tmp/samples"
  chmod -R a+rX "$ARM/tmp/samples"
  in_root "$ARM" setpriv --reuid=bin-daemon --regid=bin-daemon --init-groups \
    bash -c "cd /tmp && exec /usr/local/bin/bin-daemon run \
      --config /etc/bin-daemon/config.yaml --hardware fake --images /tmp/samples \
      --max-items 20 --events /tmp/events.jsonl"
  local items
  items=$(wc -l <"$ARM/tmp/events.jsonl")
  ((items == 20)) || {
    reason "$items events for 20 items"
    return 1
  }
  reason "20 items sorted as user bin-daemon"
}

step_armhf_refusal() {
  local root=$RUN_DIR/armhf/merged rc=0 out
  QEMU_CPU_MODEL="" # qemu-arm's default (the aarch64 names are not 32-bit CPUs)
  make_run_root "$(root_dir armhf)" armhf
  out=$(in_root "$root" bash "$SRC_IN_CHROOT/deploy/install.sh" --chroot 2>&1) || rc=$?
  printf '%s\n' "$out"
  if ((rc == 0)) || [[ $out != *"needs 64-bit Raspberry Pi OS (aarch64"* ]]; then
    reason "install.sh did not refuse armhf (exit $rc)"
    return 1
  fi
  [[ ! -e $root/opt/bin-daemon ]] || {
    reason "install.sh refused but left /opt/bin-daemon behind"
    return 1
  }
  reason "refused: $(grep -m1 '^error:' <<<"$out" | cut -c1-90)..."
}

# ------------------------------------------------------------------------------- main

main() {
  while (($#)); do
    case $1 in
      --diagnose)
        diagnose "$2"
        return
        ;;
      --break-dep) BREAK_DEP=${2:?--break-dep needs a requirement} ;;
      --model) MODEL_DIR=$(cd "${2:?--model needs a folder}" && pwd) ;;
      *)
        sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        return 2
        ;;
    esac
    shift 2
  done
  [[ $(id -u) -eq 0 ]] || {
    echo "arm64: FAILED: needs root (debootstrap, chroot, mount): sudo make test-arm64" >&2
    return 1
  }
  local start=$SECONDS
  mkdir -p "$LOG_DIR" "$CACHE"
  rm -f "$LOG_DIR"/*.log "$LOG_DIR"/*.json
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  RUN_DIR=$(mktemp -d "$CACHE/run.XXXXXX")
  ARM=$RUN_DIR/arm64/merged

  step "host tools (qemu-user-static, debootstrap)" step_host_tools || return 1
  step "binfmt_misc (qemu-aarch64, qemu-arm)" step_binfmt || return 1
  step "bookworm arm64 root" step_root arm64 || return 1
  step "arm64 chroot (overlay, /proc /dev, stand-in /sys, pip settings, checkout)" step_prepare_arm64 ||
    return 1
  if ! have_model; then
    # install.sh seeds the model store from models/ (like make test's shipped-model test)
    skipped "install.sh --chroot and the arm64 runs" "no model in models/ yet"
  elif step "install.sh --chroot (apt, user, venv, pip aarch64 wheels, model store, unit)" \
    step_install; then
    report_install_skips
    step "installed files" step_installed_files || true
    step "bin-daemon check-config" step_check_config || true
    step "bin-daemon classify --json (x86_64, the Pi's constraints)" step_classify_x86 || true
    local cpu
    for cpu in "$PI4_CPU" "$PI5_CPU"; do
      step "bin-daemon classify --json (arm64 $cpu, ${SAMPLES})" step_classify_arm64 "$cpu" ||
        true
      step "golden: arm64 $cpu vs x86_64 (XNNPACK)" step_golden "$cpu" || true
    done
    step "bin-daemon classify --json --reference-kernels (arm64 $PI4_CPU)" \
      step_classify_arm64 "$PI4_CPU" ref || true
    step "golden: reference kernels, arm64 $PI4_CPU vs x86_64" \
      step_golden "$PI4_CPU" ref || true
    step "bin-daemon run --hardware fake --max-items 20" step_run_fake || true
  fi
  step "bookworm armhf root" step_root armhf || true
  if [[ -f $(root_dir armhf).complete ]]; then
    step "install.sh refuses 32-bit Raspberry Pi OS (armhf)" step_armhf_refusal || true
  fi
  printf 'arm64 stage (%d s): %d passed, %d failed, %d skipped\n' $((SECONDS - start)) \
    "$PASSED" "$FAILED" "$SKIPPED"
  ((FAILED == 0))
}

main "$@"
