package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// artifacts is where tests keep what a person looks at afterwards
// (DSMIGRATE_ARTIFACTS, else test-artifacts/ at the top of the repository).
func artifacts(t *testing.T) string {
	dir := os.Getenv("DSMIGRATE_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(repo, "test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// chromium runs Debian's headless Chromium on hK (in its network namespace,
// where the daemon's live view listens on loopback) with args and the URL,
// and returns what it printed.
func chromium(t *testing.T, k int, url string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("chromium"); err != nil {
		t.Fatalf("no chromium: scripts/install-deps.sh installs it (apt-get install chromium)")
	}
	profile := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(2*time.Minute))
	defer cancel()
	// The flags that keep Chromium off the network it cannot reach
	// (ENVIRONMENT: background networking fails loudly on a closed one).
	base := []string{"exec", fmt.Sprintf("h%d", k), "chromium", "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
		"--disable-sync", "--user-data-dir=" + profile, "--virtual-time-budget=4000"}
	cmd := exec.CommandContext(ctx, cluster, append(append(base, args...), url)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, tail(stderr.String(), 20))
	}
	return string(out)
}

// The live view (migrated serve --http) in a real browser: after a
// migration, with a DSM job running and a host drained, the page shows
// every host with its state, the process on its new host, the job's ranks,
// and the migration on the timeline with its phases. A screenshot is kept.
func TestLiveView(t *testing.T) {
	needHosts(t, 3)
	id := start(t, 1, "lv-counter", "migtest", "counter")
	waitLog(t, 1, id, `count \d+`, 2)
	migrate(t, 1, 2, id)
	j := startJob(t, 2, sleeper(t))
	j.running()
	mustOn(t, 1, "migrated", "drain", "--host", addr(3))
	t.Cleanup(func() { on(3, "migrated", "undrain") })

	const url = "http://127.0.0.1:8077/"
	var dom string
	for end := within(60 * time.Second); ; time.Sleep(time.Second) {
		dom = chromium(t, 1, url, "--dump-dom")
		if strings.Contains(dom, `data-loaded="yes"`) && strings.Contains(dom, `data-job="`+j.id+`"`) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the page never showed the cluster with the job:\n%s", tail(dom, 40))
		}
	}
	// It polls: in Chromium's 4 s of virtual time the page asked again.
	if m := regexp.MustCompile(`data-refreshes="(\d+)"`).FindStringSubmatch(dom); m == nil || m[1] == "1" {
		t.Errorf("the page did not update itself (refreshes: %v)", m)
	}
	// Every host, in a card of its own, h3 drained; the cards in order.
	cards := regexp.MustCompile(`<div class="host" data-addr="([^"]+)" data-state="([^"]+)">`).FindAllStringSubmatchIndex(dom, -1)
	if len(cards) != nHosts {
		t.Fatalf("%d host cards, want %d:\n%s", len(cards), nHosts, tail(dom, 40))
	}
	card := map[int]string{}
	for i, c := range cards {
		k, state := hostOf(dom[c[2]:c[3]]), dom[c[4]:c[5]]
		end := len(dom)
		if i+1 < len(cards) {
			end = cards[i+1][0]
		}
		card[k] = dom[c[0]:end]
		if want := map[bool]string{true: "drained", false: "up"}[k == 3]; state != want {
			t.Errorf("h%d is shown %s, want %s", k, state, want)
		}
	}
	if !strings.Contains(card[2], `data-id="`+id+`" data-name="lv-counter" data-state="running"`) {
		t.Errorf("h2's card does not show lv-counter running:\n%s", card[2])
	}
	if strings.Contains(card[1], `data-name="lv-counter"`) {
		t.Errorf("h1's card still shows lv-counter after it left:\n%s", card[1])
	}
	for _, r := range j.running() {
		if !strings.Contains(card[hostOf(r.Host)], fmt.Sprintf(`data-job="%s" data-rank="%d"`, j.id, r.Rank)) {
			t.Errorf("rank %d of job %s is not shown on %s", r.Rank, j.id, r.Host)
		}
	}
	// The migration on the timeline: from h1 to h2, ok, with its phases.
	mig := regexp.MustCompile(`<g class="mig" data-id="` + id + `"[^>]*>(.*?)</g>`).FindStringSubmatch(dom)
	if mig == nil {
		t.Fatalf("no migration of %s on the timeline:\n%s", id, tail(dom, 40))
	}
	for _, want := range []string{`data-from="` + addr(1) + `"`, `data-to="` + addr(2) + `"`, `data-result="ok"`} {
		if !strings.Contains(mig[0], want) {
			t.Errorf("the timeline's migration lacks %s: %s", want, mig[0][:min(len(mig[0]), 300)])
		}
	}
	for _, ph := range []string{"freeze", "dump", "restore", "resume"} {
		if !strings.Contains(mig[1], `data-phase="`+ph+`"`) {
			t.Errorf("the timeline's migration has no %s phase", ph)
		}
	}
	if !strings.Contains(mig[1], `class="downtime"`) {
		t.Error("the timeline's migration does not show its downtime")
	}

	shot := filepath.Join(artifacts(t), "liveview.png")
	os.Remove(shot)
	chromium(t, 1, url, "--window-size=1280,760", "--screenshot="+shot)
	if fi, err := os.Stat(shot); err != nil || fi.Size() < 10000 {
		t.Fatalf("no screenshot at %s: %v", shot, err)
	}
	t.Logf("screenshot: %s", shot)

	// The view has no authentication of its own: a daemon refuses to
	// serve it on an address other than a loopback one, before it starts.
	out, err := exec.Command(filepath.Join(repo, "bin", "migrated"), "serve", "--config", "", "--listen",
		addr(1), "--state-dir", t.TempDir(), "--http", hostIP(1)+":8077").CombinedOutput()
	if exitStatus(err) != 2 || !strings.Contains(string(out), "ssh -L") {
		t.Errorf("--http on a non-loopback address: exit %d, %s", exitStatus(err), out)
	}
}
