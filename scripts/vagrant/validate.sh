#!/usr/bin/env bash
# make vagrant-validate: `vagrant validate` of the Vagrantfile, without libvirt
# running. Installs vagrant and vagrant-libvirt from Debian's packages when
# missing (as root); skips, saying why, when they cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v vagrant >/dev/null || ! vagrant plugin list 2>/dev/null | grep -q '^vagrant-libvirt '; then
	if [ "$(id -u)" != 0 ] || ! scripts/vagrant/setup-host.sh --vagrant-only; then
		echo "vagrant-validate: SKIPPED: vagrant (with vagrant-libvirt) is not installed and could not be installed" >&2
		exit 0
	fi
fi
# The provider's settings are checked too; nothing here talks to libvirt.
exec vagrant validate
