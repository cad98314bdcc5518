// Package netmove moves network endpoints between hosts during a migration:
// an IP address leaves the source's interface and arrives on the target's,
// the neighbours learn its new MAC address at once (gratuitous ARP), and
// CRIU's network lock, which keeps the peers of a dumped TCP connection from
// seeing resets while the connection is in flight, is copied from the source
// to the target and removed where it is no longer wanted.
//
// Every function works in the network namespace of the calling thread, so a
// daemon running inside a host's namespaces (the intended arrangement) needs
// no special care. Code that must act on another namespace should call these
// functions on a locked OS thread that it throws away afterwards.
//
// # What never moves
//
// [CheckRemove] refuses, before anything is touched, to take an address
// from a host when that would hurt it: loopback, the migration daemon's own
// address, the address the host reaches the target from, an interface's
// last address, and an IPv4 primary address with secondaries (the kernel
// would take them too). An address that leaves is described first
// ([SaveAddr]: scope, flags, label, broadcast...), so that an undo puts it
// back exactly ([RestoreAddr]), not as the CIDR alone would make it.
//
// The package owns no long-lived state: addresses are changed through
// netlink (github.com/vishvananda/netlink), the lock through the nft tool and
// announcements through arping (iputils), each with a deadline.
//
// # CRIU's network lock
//
// With --network-lock nftables, CRIU 4.x puts the lock of a dump into one
// table of the inet family named "CRIU-" plus the dump's run id, a UUID that
// CRIU cuts to fit its name buffer: CRIU 4.2.1 was seen creating
// "inet CRIU-8008451e-740e-41f8-ad" for run id
// 8008451e-740e-41f8-ad28-726dc99e3699. The name is not derived from a pid
// (only restores of images older than CRIU 4.0 use "CRIU-<pid>"), so
// [LockName] finds it from the images directory of the dump: the run id is
// recorded in inventory.img, and restore uses it to delete the lock. The
// typical sequence for a TCP connection whose address moves:
//
//	source: criu dump --tcp-established --network-lock nftables --leave-stopped
//	source: name := LockName(imagesDir); rules := ExportLock(name)
//	target: CheckLock(rules); ImportLock(rules)
//	source: CheckRemove(cidr, keep); saved := SaveAddr(iface, cidr); DelAddr(iface, cidr)
//	target: AddAddr(iface, cidr); Announce(iface, ip)
//	target: criu restore --tcp-established (deletes the target's copy)
//	source: DeleteLock(name)
//
// CRIU writes the inventory last, long after it locked the connections: a
// CRIU killed in between (a deadline, its daemon's death) leaves a table
// that no inventory names. [LocksHolding] finds it by the connections its
// sets hold, which a dump's undo knows from the process's sockets.
package netmove
