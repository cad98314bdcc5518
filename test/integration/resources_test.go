package integration

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// extraDaemon starts a second daemon on hk at port, with its own state dir
// and socket and the given flags, and stops it (SIGTERM: it unmounts its
// images tmpfs) and removes its state when the test ends. It returns the
// daemon's address and socket.
func extraDaemon(t *testing.T, k, port int, flags ...string) (string, string) {
	t.Helper()
	dir := fmt.Sprintf("/run/extra-daemon-%d", port)
	sock := dir + ".sock"
	hostport := fmt.Sprintf("%s:%d", hostIP(k), port)
	args := append([]string{"exec", fmt.Sprintf("h%d", k), "timeout", "300", "migrated", "--socket", sock, "serve",
		"--listen", hostport, "--state-dir", dir, "--token-file", tokenOn}, flags...)
	cmd := exec.Command(cluster, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		on(k, "pkill", "-TERM", "-f", exclusive("state-dir "+dir))
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(scaled(15 * time.Second)):
			on(k, "pkill", "-KILL", "-f", exclusive("state-dir "+dir))
			<-done
		}
		on(k, "sh", "-c", "umount -l "+dir+"/images 2>/dev/null; rm -rf "+dir+" "+sock)
	})
	waitPort(t, k, hostport)
	return hostport, sock
}

// A target admits an arrival only if it has the room: its images tmpfs is
// bounded (--images-size) and it keeps memory for the host (--keep-free). A
// process that does not fit is refused before it is frozen, in a sentence
// that says why, and runs on, on its source, exactly once; one that fits is
// admitted, and its pages leave the tmpfs as they are restored.
func TestAdmissionByRoom(t *testing.T) {
	needHosts(t, 3)
	id, marker, digest := startMemcount(t, 1, "big")
	// 12 MiB: the 16 MiB process cannot fit, a counter can (its images are
	// under 8 MiB here, a little over 8 in a TCG guest).
	small, sock := extraDaemon(t, 2, 7181, "--images-size", "12M", "--keep-free", "0")
	out, err := on(1, "sh", "-c", "exec 2>&1; exec migrated migrate "+id+" --to "+small)
	if err == nil {
		t.Fatalf("16 MiB of memory moved into a 12 MiB images tmpfs:\n%s", out)
	}
	if !strings.Contains(out, "has no room for this process's images") || !strings.Contains(out, "--images-size") ||
		strings.Contains(out, "freeze") {
		t.Errorf("the refusal does not say, before the freeze, that the images do not fit:\n%s", out)
	}
	exactlyOnce(t, 1, id, marker, digest)

	// A small process fits, and its images are gone once it runs there.
	cid := start(t, 1, "fits", "migtest", "counter")
	waitLog(t, 1, cid, `count \d+`, 3)
	if out, err := on(1, "sh", "-c", "exec 2>&1; exec migrated migrate "+cid+" --to "+small); err != nil {
		t.Fatalf("a small process into the 12 MiB tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() { on(2, "migrated", "--socket", sock, "kill", cid) })
	if left, _ := on(2, "sh", "-c", "ls -A /run/extra-daemon-7181/images"); strings.TrimSpace(left) != "" {
		t.Errorf("images left in the tmpfs after the arrival runs: %s", left)
	}

	greedy, _ := extraDaemon(t, 3, 7182, "--keep-free", "1000000G")
	out, err = on(1, "sh", "-c", "exec 2>&1; exec migrated migrate "+id+" --to "+greedy)
	if err == nil {
		t.Fatalf("a host that keeps more memory than it has admitted a process:\n%s", out)
	}
	if !strings.Contains(out, "does not have the memory for this process") || strings.Contains(out, "freeze") {
		t.Errorf("the refusal does not say, before the freeze, that the memory is not there:\n%s", out)
	}
	exactlyOnce(t, 1, id, marker, digest)
}
