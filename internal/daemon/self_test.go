package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"dsmigrate/internal/api"
	"dsmigrate/internal/migration"
	"dsmigrate/internal/wire"
)

// A process cannot migrate to the host it is on. The source refuses an
// address of its own at once, with the refused kind; at an address it does
// not know for its own (a second address of the host, a name), the target
// sees its own identity in the migration's Begin and refuses it, before
// anything is reserved, in words that say so (not "already exists").
func TestMigrateToSelfRefused(t *testing.T) {
	tok := []byte("a token long enough for the cluster")
	d := peerDaemon(t, tok)
	d.admit = newAdmission(d.imagesDir, 0)
	_, port, _ := net.SplitHostPort(d.advertise)

	_, err := d.migrateOut(context.Background(), Request{ID: "x", To: d.advertise}, api.Owner{}, nil)
	if err == nil {
		t.Fatal("a move to the daemon's own address was not refused")
	}
	// The process is looked up first: with none, it is not found.
	if k := api.KindOf(err); k != api.KindNotFound {
		t.Fatalf("no such process: %v (kind %q)", err, k)
	}
	p := newProc("0123456789ab", "self", []string{"sleep"}, time.Now())
	p.state = "running"
	d.procs[p.ID] = p
	_, err = d.migrateOut(context.Background(), Request{ID: p.ID, To: d.advertise}, api.Owner{}, nil)
	if api.KindOf(err) != api.KindRefused || !strings.Contains(fmt.Sprint(err), "is this host") {
		t.Fatalf("a move to the daemon's own address: %v (kind %q)", err, api.KindOf(err))
	}

	raw, err := net.Dial("tcp", "127.0.0.2:"+port)
	if err != nil {
		t.Fatal(err)
	}
	c, err := wire.Client(raw, tok)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _ := json.Marshal(&migration.Begin{Mig: "0123456789cd", ID: p.ID, Name: "self", Argv: p.Argv,
		PipeKey: "pipe:[1]", Source: d.advertise, SourceID: d.id})
	if err := c.WriteMsg(api.TBegin, b); err != nil {
		t.Fatal(err)
	}
	typ, msg, err := c.ReadMsg()
	if err != nil || typ != wire.TypeError || !strings.Contains(string(msg), "cannot migrate to its own host") {
		t.Fatalf("the target's answer to its own Begin: %d %q %v", typ, msg, err)
	}
}

// A --name is the user's on a host: one of the user's processes that has it,
// or is being started with it, keeps another from taking it; another
// user's does not.
func TestNameFree(t *testing.T) {
	d := &Daemon{procs: map[string]*Proc{}, naming: map[string]nameOf{}}
	alice, bob := api.Owner{UID: 1000}, api.Owner{UID: 1001}
	p := newProc("0123456789ab", "web", []string{"srv"}, time.Now())
	p.state, p.Owner = "running", alice
	d.procs[p.ID] = p
	d.naming["0123456789cd"] = nameOf{"db", alice.UID}
	for _, tc := range []struct {
		name  string
		who   api.Owner
		taken bool
	}{{"web", alice, true}, {"db", alice, true}, {"web", bob, false}, {"db", bob, false}, {"cache", alice, false}, {"", alice, false}} {
		err := d.nameFree(tc.name, tc.who)
		if (err != nil) != tc.taken || (err != nil && !strings.Contains(err.Error(), "is taken here")) {
			t.Errorf("name %q for uid %d: %v, want taken=%v", tc.name, tc.who.UID, err, tc.taken)
		}
	}
}
