#!/usr/bin/env bash
# Installs what `make test-vagrant` needs on a Debian 12 host, from Debian's
# packages only (no internet besides the Debian mirror): Vagrant with the
# libvirt provider, libvirt's QEMU driver, QEMU (TCG works where KVM does not),
# dnsmasq for libvirt's DHCP, and debootstrap + GRUB to build the box. Then
# starts virtlogd and libvirtd when they are not running (this machine kind has
# no systemd). Idempotent and quiet when everything is there.
#
# Usage: scripts/vagrant/setup-host.sh [--vagrant-only] [--no-daemons]
#   --vagrant-only  install only vagrant + vagrant-libvirt (for `vagrant validate`)
#   --no-daemons    do not start virtlogd/libvirtd
set -euo pipefail

log() { echo "setup-host: $*" >&2; }
die() { log "$*"; exit 1; }

only_vagrant=0 daemons=1
for a in "$@"; do
	case $a in
	--vagrant-only) only_vagrant=1 daemons=0 ;;
	--no-daemons) daemons=0 ;;
	*) die "unknown argument '$a'" ;;
	esac
done
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, libvirtd)"

pkgs=(vagrant vagrant-libvirt)
if [ $only_vagrant = 0 ]; then
	pkgs+=(libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
		qemu-system-x86 qemu-utils dnsmasq-base debootstrap grub-pc-bin
		fdisk e2fsprogs rsync openssh-client ca-certificates)
fi
need=()
for p in "${pkgs[@]}"; do
	if [ "$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then
		need+=("$p")
	fi
done
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]} (Debian packages)"
	export DEBIAN_FRONTEND=noninteractive
	# No systemd and no init scripts should start anything during the install:
	# the daemons are started below, by hand, only when asked.
	rc_d=/usr/sbin/policy-rc.d
	own_rc_d=0
	if [ ! -e $rc_d ]; then
		printf '#!/bin/sh\nexit 101\n' >$rc_d && chmod 755 $rc_d && own_rc_d=1
	fi
	trap '[ $own_rc_d = 0 ] || rm -f $rc_d' EXIT
	apt-get update -qq >/dev/null 2>&1 || apt-get update -qq
	if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >/tmp/dsmigrate-setup-host.log 2>&1; then
		tail -30 /tmp/dsmigrate-setup-host.log >&2
		die "apt-get install failed (log: /tmp/dsmigrate-setup-host.log)"
	fi
fi

[ $daemons = 1 ] || exit 0

# /dev/kvm as udev makes it on Debian (root:kvm 0660; this machine kind has no
# udev and leaves it root 0600). Otherwise libvirt finds at every call that
# KVM, usable when it probed QEMU as root, is not usable by its QEMU user
# (libvirt-qemu, in group kvm), and probes QEMU again: ~8 s per call, and
# `vagrant up` of 3 VMs took 12 minutes instead of 3. (The VMs use TCG all the same.)
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
	chgrp kvm /dev/kvm && chmod 660 /dev/kvm
fi

# virtlogd then libvirtd, each started once (no systemd on this machine kind;
# on a host with systemd running, let systemd start them).
running() { pgrep -x "$1" >/dev/null; }
if [ -d /run/systemd/system ]; then
	for s in virtlogd libvirtd; do
		running $s || systemctl start $s || die "systemctl start $s failed"
	done
else
	if ! running virtlogd; then virtlogd -d || die "virtlogd -d failed"; fi
	if ! running libvirtd; then libvirtd -d || die "libvirtd -d failed"; fi
fi
for _ in $(seq 50); do
	if virsh -c qemu:///system version >/dev/null 2>&1; then exit 0; fi
	sleep 0.2
done
die "libvirtd does not answer on qemu:///system"
