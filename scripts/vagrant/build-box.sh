#!/usr/bin/env bash
# Builds a Vagrant box for the libvirt provider from Debian 12 (bookworm)
# packages alone, and adds it to Vagrant as dsmigrate/bookworm-local. No box or
# image is downloaded: the root file system is made with debootstrap from the
# Debian mirror, and the project's runtime dependencies (CRIU >= 4.2 in its
# private prefix, tini, nftables, iptables, arping, netcat...) are baked in by
# running scripts/install-deps.sh inside it, so that guests need no internet.
#
# The box has a `vagrant` user with Vagrant's insecure public key and
# passwordless sudo, DHCP on eth0 (net.ifnames=0), ifupdown (which Vagrant's
# Debian guest support configures for private networks), rsync, and
# fs.pipe-max-size raised for CRIU's post-copy.
#
# The box is cached in $CACHE (default /var/cache/dsmigrate/vagrant-box) under
# the hash of this script and install-deps.sh, and rebuilt only when one of
# them changes (or with --force). Adding it again is skipped when Vagrant
# already has the same build.
#
# Usage: scripts/vagrant/build-box.sh [--force]
# Needs root and debootstrap, grub-pc-bin, qemu-utils, fdisk, e2fsprogs,
# vagrant (scripts/vagrant/setup-host.sh installs them).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
BOX_NAME=${MIGRATE_BOX_NAME:-dsmigrate/bookworm-local}
CACHE=${CACHE:-/var/cache/dsmigrate/vagrant-box}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
SIZE_GB=8
# Vagrant's insecure key, the one every base box carries (Vagrant replaces it
# with a key of its own on the first `vagrant up`).
INSECURE_KEY=$(find /usr/share/rubygems-integration/all/gems -path '*/vagrant-*/keys/vagrant.pub' 2>/dev/null | sort | tail -1)

log() { echo "build-box: $*" >&2; }
die() { log "$*"; exit 1; }

force=0
case ${1:-} in
--force) force=1 ;;
"") ;;
*) die "usage: $0 [--force]" ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, loop devices)"
# Every mount of the build in a mount namespace of its own: a namespace that
# someone else makes meanwhile (unshare --mount, as the namespace cluster's
# hosts do) would otherwise copy the image's mount, keep its file system alive
# after our umount, and the image would be written out empty (seen).
if [ -z "${DSMIGRATE_BOX_NS:-}" ]; then
	DSMIGRATE_BOX_NS=1 exec unshare --mount --propagation private bash "${BASH_SOURCE[0]}" "$@"
fi
for c in debootstrap grub-mkimage qemu-img sfdisk mkfs.ext4 losetup vagrant; do
	command -v "$c" >/dev/null || die "$c missing: run scripts/vagrant/setup-host.sh"
done
[ -n "$INSECURE_KEY" ] || die "Vagrant's insecure key (keys/vagrant.pub) not found"

hash=$(cat "${BASH_SOURCE[0]}" "$REPO/scripts/install-deps.sh" | sha256sum | cut -c1-16)
box=$CACHE/dsmigrate-bookworm-$hash.box
vagrant_home=${VAGRANT_HOME:-$HOME/.vagrant.d}
added=$vagrant_home/boxes/${BOX_NAME//\//-VAGRANTSLASH-}/0/libvirt/dsmigrate-build

if [ $force = 0 ] && [ -f "$box" ]; then
	if [ "$(cat "$added" 2>/dev/null)" = "$hash" ]; then
		exit 0 # built and added already
	fi
else
	mkdir -p "$CACHE"
	start=$SECONDS
	work=$(mktemp -d "$CACHE/build.XXXXXX")
	root=$work/root
	mnt=$work/mnt
	loop=
	cleanup() {
		local m
		for m in "$root/dev/pts" "$root/dev" "$root/sys" "$root/proc" "$mnt"; do
			mountpoint -q "$m" 2>/dev/null && umount -l "$m"
		done
		[ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
		rm -rf "$work"
	}
	trap cleanup EXIT

	# --- root file system ------------------------------------------------------
	log "debootstrap $SUITE into $root (a minute or two)"
	include=linux-image-amd64,systemd-sysv,udev,dbus,openssh-server,sudo,rsync,ifupdown,isc-dhcp-client
	include+=,iproute2,iputils-ping,procps,kmod,initramfs-tools,netbase,ca-certificates,less,psmisc
	mkdir -p "$CACHE/debs"
	if ! debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$include" "$SUITE" "$root" "$MIRROR" \
		>"$work/debootstrap.log" 2>&1; then
		tail -30 "$work/debootstrap.log" >&2
		cp "$work/debootstrap.log" "$CACHE/debootstrap-failed.log"
		die "debootstrap failed (log: $CACHE/debootstrap-failed.log)"
	fi

	mount -t proc proc "$root/proc"
	mount -t sysfs sys "$root/sys"
	mount --bind /dev "$root/dev"
	mount --bind /dev/pts "$root/dev/pts"
	cp /etc/resolv.conf "$root/etc/resolv.conf"
	cat >"$root/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SRC
	# Debian testing's Release files can look expired to a machine whose clock
	# is off (this machine kind's is): apt here does not check dates, nor does
	# the build. Removed again below: the guests need no apt.
	printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' \
		>"$root/etc/apt/apt.conf.d/99dsmigrate-build"

	# The project's runtime dependencies, exactly as a host gets them.
	log "scripts/install-deps.sh in the box ($((SECONDS - start)) s so far)"
	install -D -m 755 "$REPO/scripts/install-deps.sh" "$root/tmp/install-deps.sh"
	# In a mount namespace of its own whose root is the box's file system
	# (pivot_root, the host's mounts gone), since it runs `criu check`, which
	# fails in a plain chroot ("mnt: No parent found for mountpoint").
	# shellcheck disable=SC2016 # expanded by the inner bash
	unshare --mount --pid --fork --propagation private bash -euc '
		root=$1
		mount --bind "$root" "$root"
		mount -t proc proc "$root/proc"
		mount --rbind /sys "$root/sys"
		mount --rbind /dev "$root/dev"
		cd "$root"
		mkdir -p .oldroot
		pivot_root . .oldroot
		umount -l /.oldroot
		rmdir /.oldroot
		exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /tmp/install-deps.sh
	' install-deps-in-box "$root"
	rm -f "$root/tmp/install-deps.sh"
	echo fs.pipe-max-size=4194304 >"$root/etc/sysctl.d/90-migrated.conf"

	# --- the guest's configuration -------------------------------------------
	echo dsmigrate >"$root/etc/hostname"
	printf '127.0.0.1\tlocalhost\n127.0.1.1\tdsmigrate\n' >"$root/etc/hosts"
	cat >"$root/etc/network/interfaces" <<'NET'
auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp

source /etc/network/interfaces.d/*
NET
	chroot "$root" useradd -m -s /bin/bash -G sudo vagrant
	echo vagrant:vagrant | chroot "$root" chpasswd
	install -d -m 700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
	install -m 600 -o 1000 -g 1000 "$INSECURE_KEY" "$root/home/vagrant/.ssh/authorized_keys"
	echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >"$root/etc/sudoers.d/vagrant"
	chmod 440 "$root/etc/sudoers.d/vagrant"
	# sshd: no DNS lookups (no resolver answers offline), and host keys made
	# per machine at first boot rather than shared by every VM of the box.
	echo 'UseDNS no' >"$root/etc/ssh/sshd_config.d/vagrant.conf"
	rm -f "$root"/etc/ssh/ssh_host_*
	mkdir -p "$root/etc/systemd/system/ssh.service.d"
	printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
		>"$root/etc/systemd/system/ssh.service.d/keygen.conf"
	# Nothing waits for a network that will not come (the private network is
	# configured by Vagrant after boot).
	chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
	: >"$root/etc/machine-id"
	rm -f "$root/var/lib/dbus/machine-id"
	chroot "$root" apt-get clean
	rm -rf "$root"/var/lib/apt/lists/* "$root/etc/resolv.conf" "$root/etc/apt/apt.conf.d/99dsmigrate-build"

	for m in "$root/dev/pts" "$root/dev" "$root/sys" "$root/proc"; do umount "$m"; done

	# --- disk image: one MBR partition at 1 MiB, ext4, GRUB in the gap -------
	# losetup -P makes no partition nodes on this kernel: the partition is
	# looped by offset, and GRUB goes in with grub-mkimage and dd.
	log "disk image ($((SECONDS - start)) s so far)"
	img=$work/disk.raw
	truncate -s ${SIZE_GB}G "$img"
	echo 'start=2048, type=83, bootable' | sfdisk -q "$img"
	off=$((2048 * 512))
	loop=$(losetup -f --show -o $off --sizelimit $((SIZE_GB * 1024 * 1024 * 1024 - off)) "$img")
	mkfs.ext4 -q -L root "$loop"
	uuid=$(blkid -s UUID -o value "$loop")
	mkdir -p "$mnt"
	mount "$loop" "$mnt"
	tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -cf - . |
		tar -C "$mnt" --numeric-owner --xattrs --xattrs-include='*' -xpf -
	echo "UUID=$uuid / ext4 errors=remount-ro 0 1" >"$mnt/etc/fstab"
	kernel=$(find "$mnt/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sort -V | tail -1)
	initrd=initrd.img-${kernel#vmlinuz-}
	[ -f "$mnt/boot/$initrd" ] || die "no $initrd in the box"
	mkdir -p "$mnt/boot/grub"
	cat >"$mnt/boot/grub/grub.cfg" <<CFG
set timeout=0
menuentry "Debian $SUITE" {
	search --no-floppy --fs-uuid --set=root $uuid
	linux /boot/$kernel root=UUID=$uuid ro net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200 quiet
	initrd /boot/$initrd
}
CFG
	umount "$mnt"
	# The file system must be complete and clean in the image before it is
	# converted.
	blockdev --flushbufs "$loop"
	e2fsck -fn "$loop" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log" >&2; die "the image's file system is not clean"; }
	losetup -d "$loop"
	loop=
	grub-mkimage -O i386-pc -o "$work/core.img" -p '(hd0,msdos1)/boot/grub' \
		biosdisk part_msdos ext2 normal linux search search_fs_uuid configfile echo
	[ "$(stat -c %s "$work/core.img")" -lt $((2047 * 512)) ] || die "core.img does not fit before the partition"
	dd if=/usr/lib/grub/i386-pc/boot.img of="$img" bs=440 count=1 conv=notrunc status=none
	dd if="$work/core.img" of="$img" bs=512 seek=1 conv=notrunc status=none

	# --- the box ---------------------------------------------------------------
	log "qcow2 and box"
	mkdir -p "$work/box"
	qemu-img convert -O qcow2 "$img" "$work/box/box.img"
	[ "$(stat -c %s "$work/box/box.img")" -gt $((200 * 1024 * 1024)) ] || die "box.img is too small to hold the system"
	rm -f "$img"
	printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' $SIZE_GB >"$work/box/metadata.json"
	echo "$hash" >"$work/box/dsmigrate-build"
	tar -C "$work/box" -cf "$box.tmp" metadata.json dsmigrate-build box.img
	mv "$box.tmp" "$box"
	# Older builds of the box are of no use any more.
	find "$CACHE" -maxdepth 1 -name 'dsmigrate-bookworm-*.box' ! -name "${box##*/}" -delete
	log "built $box ($(du -h "$box" | cut -f1)) in $((SECONDS - start)) s"
fi

# --- add it to Vagrant (and drop libvirt's copy of an older build) -------------
if virsh -c qemu:///system pool-info default >/dev/null 2>&1; then
	virsh -c qemu:///system vol-list default 2>/dev/null |
		awk -v p="${BOX_NAME//\//-VAGRANTSLASH-}_vagrant_box_image" 'index($1, p) == 1 {print $1}' |
		while read -r vol; do
			virsh -c qemu:///system vol-delete --pool default "$vol" >/dev/null
		done
fi
vagrant box add --force --name "$BOX_NAME" --provider libvirt "$box" >/dev/null
log "vagrant box $BOX_NAME added (build $hash)"
