package dsmshm

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	mrt "dsmigrate/runtime"
)

// TestMain lets the test binary act as a rank of a job when the launcher
// variables and DSMSHM_TEST_WORKER are set (see launchSelf).
func TestMain(m *testing.M) {
	if w := os.Getenv("DSMSHM_TEST_WORKER"); w != "" {
		if err := worker(w); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func worker(kind string) error {
	cfg, err := configFromSelf()
	if err != nil {
		return err
	}
	if kind == "config" { // TestStartWithoutLauncher: what Start would join
		fmt.Printf("job=%s rank=%d peers=%v secret=%x encrypt=%v\n", cfg.Job, cfg.Rank, cfg.Peers, cfg.Secret, cfg.Encrypt)
		return nil
	}
	cfg.DialTimeout = 2 * time.Second
	node, err := StartWith(cfg)
	if err != nil {
		return err
	}
	switch kind {
	case "die":
		// Rank 1 vanishes without Close; rank 0 must get an error, not hang.
		if node.Rank() == 1 {
			os.Exit(3)
		}
		start := time.Now()
		err := node.Barrier(0)
		fmt.Printf("barrier after %v: %v\n", time.Since(start).Round(100*time.Millisecond), err)
		if err == nil {
			return fmt.Errorf("barrier with a dead rank succeeded")
		}
		node.Close()
		return nil
	}
	return fmt.Errorf("unknown worker %q", kind)
}

func TestDeadRankIsAnError(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes; skipped with -short")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("DSMSHM_TEST_WORKER", "die")
	peers := strings.Join(freePorts(t, 2), ",")
	secret := newJobSecret(t)
	out := make(chan string, 1)
	go func() {
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), "DSM_JOB=die", "DSM_RANK=1", "DSM_SIZE=2", "DSM_PEERS="+peers)
		runRank(cmd, secret)
	}()
	go func() {
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), "DSM_JOB=die", "DSM_RANK=0", "DSM_SIZE=2", "DSM_PEERS="+peers)
		var b bytes.Buffer
		cmd.Stdout, cmd.Stderr = &b, &b
		err := runRank(cmd, secret)
		out <- fmt.Sprintf("%s(exit: %v)", b.Bytes(), err)
	}()
	select {
	case o := <-out:
		if !strings.Contains(o, "barrier after") || !strings.Contains(o, "rank 1") || !strings.Contains(o, "exit: <nil>") {
			t.Fatalf("rank 0 output:\n%s", o)
		}
		t.Logf("rank 0: %s", o)
	case <-time.After(30 * time.Second):
		t.Fatal("rank 0 hung after rank 1 died")
	}
}

// newJobSecret is a fresh job secret, as dsmrun run makes one per job.
func newJobSecret(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, mrt.SecretLen)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// runRank runs cmd, a rank whose launch environment is in cmd.Env, with
// the job's secret on an inherited pipe, as dsmrun run's daemons start
// ranks (runtime.PassSecret).
func runRank(cmd *exec.Cmd, secret []byte) error {
	r, err := mrt.PassSecret(cmd, secret)
	if err != nil {
		return err
	}
	err = cmd.Start()
	r.Close()
	if err != nil {
		return err
	}
	return cmd.Wait()
}
