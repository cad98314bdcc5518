// Package daemon is the server behind `migrated serve`: one host's
// migration daemon. It owns the host's process table (each process held by
// a shim of its own, package shim, and recorded in STATE/procs/ID/proc.json
// so that a restarted daemon finds it again), serves local clients on a
// unix socket, each as the user it is (users.go), other daemons and remote
// clients (dsmrun) over authenticated TCP, and migration-aware processes on
// a control socket; and it runs migrations with the engine of package
// migration, whose interfaces it implements here for real (engine.go: CRIU
// with the page relay of pages.go, netmove, the quiesce helper, the shims).
//
// Lifecycle: New, then Serve, which refuses a listen address peers cannot
// call back without an advertised one (addrs.go), a state directory or
// socket another daemon holds, reattaches the shims, settles the migrations a
// restart interrupted (Engine.Recover), removes what a crash left, and
// serves until its context ends or SIGTERM/SIGINT. Stopping, or dying,
// leaves every process running under its shim.
package daemon

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"dsmigrate/criu"
	"dsmigrate/internal/api"
	"dsmigrate/internal/journal"
	"dsmigrate/internal/migration"
	"dsmigrate/internal/wire"
)

// Daemon is one host's migration daemon.
type Daemon struct {
	listen    string
	advertise string       // the address peers are told to call back (Config.Advertise, else listen)
	id        string       // this daemon's identity (daemonID), set with the engine
	own       []netip.Addr // the daemon's own addresses: never moved or removed
	stateDir  string
	imagesDir string
	criu      *criu.Client
	quiescer  quiescer               // stops a tree for a dump
	dumps     ahead[dumpWorker]      // the next dump's CRIU, started ahead (dumpworker.go)
	shims     ahead[aheadShim]       // the next arrival's shim, started ahead (shimahead.go)
	token     atomic.Pointer[[]byte] // the cluster token(s) (wire.LoadToken); nil: none. SIGHUP reloads it
	ctlPath   string                 // the control socket of migration-aware processes
	sockPath  string                 // the local clients' socket
	tokenFile string
	log       *slog.Logger

	engine *migration.Engine // migrations in and out (internal/migration)
	admit  *admission        // memory held by incoming migrations (admit.go)

	imagesSize string // Config.ImagesSize
	keepFree   string // Config.KeepFree

	peers    []string    // Config.Peers
	httpAddr string      // Config.HTTP: the live view (web.go)
	drained  atomic.Bool // migrated drain: no new processes, no arrivals (drain.go)

	metricsAddr string   // Config.Metrics
	metrics     *metrics // nil without --metrics (metrics.go)

	// Log lines anyone who reaches the TCP port can cause, at most one a
	// limiter's interval each.
	handshakeLog, capLog, acceptLog logLimiter

	mu        sync.Mutex
	procs     map[string]*Proc
	launching map[string]chan struct{} // IDs being launched (run): closed once in procs, or failed
	naming    map[string]nameOf        // the --name of each ID being launched (nameFree)
	records   []MigrationRec
}

var (
	idRE   = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{12}$`) })
	nameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,63}$`) })
)

func newID() string { return migration.NewID() }

// Config is what a daemon is started with (migrated serve's flags).
type Config struct {
	Listen    string       // ADDR:PORT for other daemons and remote clients
	Advertise string       // ADDR:PORT peers call back; "": Listen, which must then name an address (not :PORT)
	StateDir  string       // processes, logs, images, journal
	CRIU      string       // the CRIU binary
	Socket    string       // the local clients' unix socket
	TokenFile string       // the cluster's shared secret; "" accepts no migration
	Log       *slog.Logger // nil: text on stderr
	// ImagesSize bounds the images tmpfs: a size (4G) or a share of the
	// host's RAM (50%); "" is 50%.
	ImagesSize string
	// KeepFree is memory never given to incoming migrations (admit.go):
	// a size (256M, or 0 for none); "" is DefaultKeepFree.
	KeepFree string
	// Metrics is the ADDR:PORT Prometheus metrics are served on, at
	// /metrics (metrics.go, docs/metrics.md); "": none.
	Metrics string
	// Peers are the cluster's daemons (ADDR:PORT), this one's among them
	// or not: placement picks among them (place.go, internal/placement).
	Peers []string
	// HTTP is the loopback ADDR:PORT the live view is served on (web.go);
	// "": none.
	HTTP string
}

// New returns the daemon cfg describes; Serve runs it.
func New(cfg Config) *Daemon {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return &Daemon{listen: cfg.Listen, advertise: cfg.Advertise, stateDir: cfg.StateDir, criu: criu.New(cfg.CRIU),
		procs: map[string]*Proc{}, launching: map[string]chan struct{}{}, naming: map[string]nameOf{}, log: log, sockPath: cfg.Socket, tokenFile: cfg.TokenFile,
		handshakeLog: logLimiter{every: logEvery}, capLog: logLimiter{every: logEvery},
		acceptLog: logLimiter{every: logEvery}, imagesSize: cfg.ImagesSize, keepFree: cfg.KeepFree,
		metricsAddr: cfg.Metrics, peers: cfg.Peers, httpAddr: cfg.HTTP}
}

// Bounds on what a connection that has not proved the token can cost: it
// holds a socket and a goroutine until its handshake ends, and anyone who
// reaches the port can open one.
const (
	maxPreAuth       = 64               // unauthenticated connections at once; more are closed at once
	handshakeTimeout = 10 * time.Second // to prove the token
	logEvery         = 10 * time.Second // between log lines about refused connections, of each kind
)

// Serve runs the daemon until ctx ends or it gets SIGTERM or SIGINT: it
// takes the state directory and the socket (refusing if another daemon has
// them), finds its processes' shims again, settles the migrations a restart
// interrupted, and serves local clients, peers and processes' control
// connections. Stopping leaves every process running under its shim.
func (d *Daemon) Serve(ctx context.Context) error { return d.serve(ctx, d.sockPath, d.tokenFile) }

func (d *Daemon) serve(ctx context.Context, sockPath, tokenFile string) error {
	// First, so that a wrong address is refused before anything else.
	adv, own, err := advertised(ctx, d.listen, d.advertise)
	if err != nil {
		return err
	}
	d.advertise, d.own = adv, own
	if d.httpAddr != "" {
		if err := CheckHTTPAddr(d.httpAddr); err != nil {
			return err
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("the daemon must run as root (it drives CRIU)")
	}
	v, err := d.criu.Check(ctx)
	if err != nil {
		return err
	}
	d.log.Info("CRIU ready", "version", v.String(), "path", d.criu.Path)
	if err := d.quiescer.warm(); err != nil {
		return fmt.Errorf("starting the quiesce helper: %v", err)
	}
	defer d.quiescer.close()
	if tokenFile != "" {
		if err := d.reloadToken(tokenFile); err != nil {
			return err
		}
	} else {
		d.log.Warn("no --token-file: this daemon will not accept migrations or remote requests")
	}
	d.imagesDir = filepath.Join(d.stateDir, "images")
	for _, dir := range []string{d.stateDir, d.imagesDir, filepath.Join(d.stateDir, "procs")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	d.loadDrained()
	// One daemon to a state directory, and one to a socket: a second
	// would act on the same processes and journal.
	for _, lock := range []string{filepath.Join(d.stateDir, "lock"), sockPath + ".lock"} {
		release, err := journal.Lock(lock)
		if errors.Is(err, journal.ErrLocked) {
			return fmt.Errorf("another migrated is serving here: %v; stop it first, or give this one its own --state-dir and --socket", err)
		}
		if err != nil {
			return err
		}
		defer release()
	}
	size, err := imagesSize(cmp.Or(d.imagesSize, "50%"))
	if err != nil {
		return err
	}
	unmount, err := mountImages(d.imagesDir, size)
	if err != nil {
		return err
	}
	defer unmount()
	keep := int64(DefaultKeepFree)
	if d.keepFree != "" {
		if keep, err = keepFree(d.keepFree); err != nil {
			return err
		}
	}
	d.admit = newAdmission(d.imagesDir, keep)
	d.loadRecords()
	// The processes first: their shims kept them while no daemon ran, and
	// the engine's recovery needs them.
	if err := d.reattach(); err != nil {
		return err
	}
	// Metrics count from before the recovery, which may end migrations.
	stopMetrics, err := d.serveMetrics()
	if err != nil {
		return err
	}
	defer stopMetrics()
	if d.engine, err = d.newEngine(); err != nil {
		return err
	}
	// Settle what a crash or restart left unfinished before any peer can
	// ask how a migration ended.
	if err := d.engine.Recover(ctx); err != nil {
		return fmt.Errorf("settling interrupted migrations: %v", err)
	}
	d.removeStaleImages()
	d.removeStaleAhead()
	d.openDumps()
	defer d.closeDumps()
	d.openShims()
	defer d.closeShims()

	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	tl, err := lc.Listen(ctx, "tcp", d.listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %v", d.listen, err)
	}
	defer tl.Close()
	os.Remove(sockPath)
	if err := os.MkdirAll(filepath.Dir(sockPath), 0o755); err != nil {
		return err
	}
	old := unix.Umask(0o077)
	ul, err := net.Listen("unix", sockPath)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %v", sockPath, err)
	}
	defer ul.Close()
	// Every user may connect: the daemon knows each by its credentials.
	if err := os.Chmod(sockPath, 0o666); err != nil {
		return err
	}
	d.ctlPath = sockPath + ".ctl"
	cl, err := listenControl(d.ctlPath)
	if err != nil {
		return err
	}
	defer cl.Close()
	go d.serveControl(cl)
	stopHTTP, err := d.serveHTTP()
	if err != nil {
		return err
	}
	defer stopHTTP()
	d.log.Info("serving", "listen", d.listen, "advertise", d.advertise, "socket", sockPath, "state", d.stateDir)

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d.reloadOnHangup(ctx, tokenFile)
	go d.acceptLoop(ul, d.handleLocal)
	go d.acceptPeers(tl, d.handlePeer)
	<-ctx.Done()
	d.log.Info("shutting down")
	return nil
}

// tokenNow is the cluster token as last loaded, nil if none.
func (d *Daemon) tokenNow() []byte {
	if t := d.token.Load(); t != nil {
		return *t
	}
	return nil
}

// reloadToken loads the token file; on failure the token in use stays.
func (d *Daemon) reloadToken(tokenFile string) error {
	tok, err := wire.LoadToken(tokenFile)
	if err != nil {
		return err
	}
	d.token.Store(&tok)
	return nil
}

// reloadOnHangup reloads the token file on SIGHUP until ctx ends, so that a
// token rotation (wire.LoadToken) needs no restart: connections from then on
// use the file's tokens, those already open keep their keys. SIGHUP is
// caught from when it returns.
func (d *Daemon) reloadOnHangup(ctx context.Context, tokenFile string) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go d.hangups(ctx, hup, tokenFile)
}

func (d *Daemon) hangups(ctx context.Context, hup chan os.Signal, tokenFile string) {
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if tokenFile == "" {
			d.log.Warn("SIGHUP: no --token-file to reload")
			continue
		}
		if err := d.reloadToken(tokenFile); err != nil {
			d.log.Error("SIGHUP: the token file could not be reloaded; the token in use stays", "err", err)
			continue
		}
		d.log.Info("SIGHUP: token file reloaded", "tokens", bytes.Count(d.tokenNow(), []byte("\n"))+1)
	}
}

func (d *Daemon) acceptLoop(l net.Listener, h func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, typically: wait, and say so now and then.
			if ok, n := d.acceptLog.allow(time.Now()); ok {
				d.log.Warn("accept", "err", err, "errors_not_logged", n)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go h(c)
	}
}

// acceptPeers is acceptLoop for the TCP listener, where anyone may connect:
// at most maxPreAuth connections are between their accept and the end of
// their handshake (h calls authed then; returning does too), and one
// beyond that is closed at once.
func (d *Daemon) acceptPeers(l net.Listener, h func(c net.Conn, authed func())) {
	slots := make(chan struct{}, maxPreAuth)
	d.acceptLoop(l, func(c net.Conn) {
		select {
		case slots <- struct{}{}:
		default:
			// The line first: whoever sees the close may look for it.
			if ok, n := d.capLog.allow(time.Now()); ok {
				d.log.Warn("too many connections that have not authenticated: closing new ones at once",
					"limit", maxPreAuth, "remote", c.RemoteAddr(), "closed_not_logged", n)
			}
			c.Close()
			return
		}
		var once sync.Once
		authed := func() { once.Do(func() { <-slots }) }
		defer authed()
		h(c, authed)
	})
}

// handleLocal serves a client on the local socket, any user of the host,
// as who the socket's peer credentials say it is (users.go).
func (d *Daemon) handleLocal(c net.Conn) {
	defer c.Close()
	caller, err := peerOwner(c)
	if err != nil {
		d.log.Warn("a local client whose credentials cannot be read: refused", "err", err)
		return
	}
	wc := wire.Plain(c)
	var req Request
	if err := wc.ReadJSON(tRequest, &req); err != nil {
		return
	}
	if req.Owner != nil {
		wc.WriteError(errors.New("a local request names no owner: this daemon knows its caller"))
		return
	}
	if req.Host != "" {
		d.relay(c, wc, req, caller)
		return
	}
	d.handleRequest(wc, req, caller)
}

// handlePeer serves a TCP connection: another daemon sending a process, or a
// remote client (dsmrun). Nothing happens before the peer proves the token,
// within handshakeTimeout; authed is called when the handshake is over.
func (d *Daemon) handlePeer(c net.Conn, authed func()) {
	defer c.Close()
	tok := d.tokenNow()
	if tok == nil {
		return
	}
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	wc, err := wire.Server(c, tok)
	authed()
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return // a port probe, not a peer
		}
		if ok, n := d.handshakeLog.allow(time.Now()); ok {
			d.log.Warn("peer refused", "remote", c.RemoteAddr(), "err", err, "refusals_not_logged", n)
		}
		return
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	typ, payload, err := wc.ReadMsg()
	if err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	if ok, err := d.engine.HandlePeer(context.Background(), wc, typ, payload); ok {
		if err != nil {
			d.log.Warn("peer request failed", "remote", c.RemoteAddr(), "type", typ, "err", err)
		}
		// The next arrival's shim, once an arrival is over (a no-op
		// after the other requests: one waits).
		d.refillShim()
		return
	}
	switch typ {
	case tRequest:
		var req Request
		if err := json.Unmarshal(payload, &req); err != nil {
			wc.WriteError(fmt.Errorf("bad request: %v", err))
			return
		}
		if req.Host != "" {
			wc.WriteError(errors.New("a request over TCP is not passed on (Host): send it to that daemon"))
			return
		}
		// The token is root's: a request carries the owner a daemon
		// passed it on for (relay), or is root's own.
		caller := api.Owner{}
		if req.Owner != nil {
			caller = *req.Owner
		}
		d.handleRequest(wc, req, caller)
	default:
		wc.WriteError(fmt.Errorf("unexpected message type %d", typ))
	}
}

func (d *Daemon) handleRequest(c *wire.Conn, req Request, caller api.Owner) {
	reply, err := d.do(c, req, caller)
	if err != nil {
		c.WriteJSON(tFail, api.AsError(err))
		return
	}
	if reply != nil {
		c.WriteJSON(tReply, reply)
	}
}

// do serves req for caller, who may see and act on the processes it owns
// (root: all of them).
func (d *Daemon) do(c *wire.Conn, req Request, caller api.Owner) (*Reply, error) {
	switch req.Op {
	case "run":
		if req.Name != "" && !nameRE().MatchString(req.Name) {
			return nil, fmt.Errorf("bad name %q: use letters, digits and ._:@+- (at most 64)", req.Name)
		}
		if err := d.refuseDrained("new processes"); err != nil {
			return nil, err
		}
		if req.OwnIP != "" {
			if _, err := netip.ParsePrefix(req.OwnIP); err != nil {
				return nil, fmt.Errorf("bad address %q: want IP/PREFIX", req.OwnIP)
			}
		}
		id := newID()
		name := req.Name
		if name == "" {
			name = filepath.Base(firstOr(req.Argv, "proc"))
		}
		// The process may register its hooks (package runtime) before
		// launchRun returns: the control socket waits for it (launched).
		// Its --name is taken from here on (nameFree).
		launched := make(chan struct{})
		d.mu.Lock()
		if err := d.nameFree(req.Name, caller); err != nil {
			d.mu.Unlock()
			return nil, err
		}
		d.launching[id] = launched
		if req.Name != "" {
			d.naming[id] = nameOf{req.Name, caller.UID}
		}
		d.mu.Unlock()
		defer func() {
			d.mu.Lock()
			delete(d.launching, id)
			delete(d.naming, id)
			d.mu.Unlock()
			close(launched)
		}()
		p, err := d.launchRun(id, name, req, caller)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		p.Job, p.Rank, p.ownIP = req.Job, req.Rank, req.OwnIP
		p.mu.Unlock()
		d.mu.Lock()
		d.procs[id] = p
		d.mu.Unlock()
		if err := d.saveProc(p); err != nil {
			d.log.Error("writing a process record", "id", id, "err", err)
		}
		d.log.Info("started", "id", id, "name", name, "pid", p.pid, "uid", caller.UID, "argv", req.Argv)
		return &Reply{ID: id}, nil
	case "ps":
		return &Reply{Procs: d.list(caller)}, nil
	case "identity": // who this daemon is and what it has (place.go)
		in, err := d.info()
		if err != nil {
			return nil, err
		}
		return &Reply{Check: &api.CheckReport{Daemon: in, Checks: []api.Check{}}}, nil
	case "view": // the live view's part of this host (web.go)
		if err := rootOnly(caller, "the live view's request", "open the live view (migrated serve --http)"); err != nil {
			return nil, err
		}
		return d.viewReply(), nil
	case "hosts", "place": // the cluster, as placement sees it (place.go)
		ctx, cancel := context.WithTimeout(context.Background(), 2*surveyTimeout)
		defer cancel()
		if req.Op == "place" {
			return d.place(ctx, req)
		}
		hosts, err := d.survey(ctx)
		if err != nil {
			return nil, err
		}
		return &Reply{Hosts: hostInfos(hosts, d.advertise)}, nil
	case "drain": // drain.go
		ctx, cancel := clientContext(c, 0)
		defer cancel()
		return d.drain(ctx, req, caller, func(e Event) { c.WriteJSON(tEvent, e) })
	case "undrain":
		if err := rootOnly(caller, "undraining a host", "ask root to undrain it"); err != nil {
			return nil, err
		}
		if err := d.setDrained(false); err != nil {
			return nil, err
		}
		return &Reply{}, nil
	case "history":
		d.mu.Lock()
		defer d.mu.Unlock()
		var recs []MigrationRec
		for _, r := range d.records {
			if caller.May(api.Owner{UID: r.UID}) {
				recs = append(recs, r)
			}
		}
		return &Reply{Records: recs}, nil
	case "logs":
		p, err := d.getFor(req.ID, caller)
		if err != nil {
			return nil, err
		}
		p.flushLog()
		if _, err := p.copyLog(&msgWriter{c: c, typ: tLogData}, 0); err != nil {
			return nil, err
		}
		return &Reply{ID: p.ID}, nil
	case "follow":
		p, err := d.getFor(req.ID, caller)
		if err != nil {
			return nil, err
		}
		return d.follow(c, p, req.Offset)
	case "kill":
		p, err := d.getFor(req.ID, caller)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		st := p.state
		p.mu.Unlock()
		if st == "migrating" || st == "incoming" {
			return nil, fmt.Errorf("process %s is %s: try again when the migration is over", p.ID, st)
		}
		if st == "running" {
			killTree(p)
		}
		d.mu.Lock()
		delete(d.procs, p.ID)
		d.mu.Unlock()
		if err := d.dropProc(p, false); err != nil {
			d.log.Error("deleting a process record", "id", p.ID, "err", err)
		}
		// Followers may be reading the log still.
		d.forgetLater(p)
		return &Reply{ID: p.ID}, nil
	case "addip", "delip":
		// An address of a process's own (dsmrun run --rank-ips), added
		// before it starts; it then moves with it (migrate --move-ip).
		if err := rootOnly(caller, "adding or removing an address", "start the job without --rank-ips, "+
			"or have root run it"); err != nil {
			return nil, err
		}
		var err error
		if req.Op == "addip" {
			err = d.addIP(req.MoveIP)
		} else {
			err = d.delIP(req.MoveIP)
		}
		if err != nil {
			return nil, err
		}
		return &Reply{}, nil
	case "check": // migrated check (check.go)
		return d.check(req, caller)
	case "migrate":
		if req.MoveIP != "" {
			if err := rootOnly(caller, "moving an address (--move-ip)", "migrate without --move-ip"); err != nil {
				return nil, err
			}
		}
		ctx, cancel := clientContext(c, req.Timeout)
		defer cancel()
		rec, err := d.migrateOut(ctx, req, caller, func(e Event) { c.WriteJSON(tEvent, e) })
		if err != nil {
			return nil, err
		}
		return &Reply{ID: req.ID, Record: rec}, nil
	}
	return nil, fmt.Errorf("unknown request %q", req.Op)
}

// clientContext is the context of a request that c's client may call off
// (a migration, before its commit): by half-closing its connection (or
// hanging up), or by a timeout it gave (0: none). The client sends
// nothing after its request, so c's reader is free for this.
func clientContext(c *wire.Conn, timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() {
		for {
			if _, _, err := c.ReadMsg(); err != nil {
				cancel(api.Errorf(api.KindRefused, "cancelled by its client"))
				return
			}
		}
	}()
	if timeout <= 0 {
		return ctx, func() { cancel(nil) }
	}
	tctx, tcancel := context.WithTimeoutCause(ctx, timeout,
		api.Errorf(api.KindRefused, "timed out: not committed within --timeout %v", timeout))
	return tctx, func() {
		tcancel()
		cancel(nil)
	}
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}

// msgWriter turns writes into messages of one type.
type msgWriter struct {
	c   *wire.Conn
	typ byte
}

func (w *msgWriter) Write(b []byte) (int, error) {
	for off := 0; off < len(b); off += 256 << 10 {
		end := min(off+256<<10, len(b))
		if err := w.c.WriteMsg(w.typ, b[off:end]); err != nil {
			return off, err
		}
	}
	return len(b), nil
}

// get finds a process by its ID, a unique prefix of it or its name, among
// all of them (getFor: among a caller's).
func (d *Daemon) get(id string) (*Proc, error) { return d.getFor(id, api.Owner{}) }

// list is what caller may see of the process table, oldest first.
func (d *Daemon) list(caller api.Owner) []ProcInfo {
	d.mu.Lock()
	out := make([]ProcInfo, 0, len(d.procs))
	for _, p := range d.procs {
		if caller.May(p.Owner) {
			out = append(out, p.info())
		}
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

// addRecord keeps a migration record in memory and in STATE/migrations.jsonl.
func (d *Daemon) addRecord(r MigrationRec) {
	d.metrics.record(r) // metrics.go
	d.mu.Lock()
	d.records = append(d.records, r)
	d.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(d.stateDir, "migrations.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err == nil {
		err = json.NewEncoder(f).Encode(r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		d.log.Error("writing the migration history", "id", r.ID, "err", err)
	}
}

// removeStaleImages removes image directories no unsettled migration
// refers to: a crash left them.
func (d *Daemon) removeStaleImages() {
	keep := map[string]bool{}
	for _, r := range d.engine.Active() {
		keep[r.Images] = true
	}
	entries, _ := os.ReadDir(d.imagesDir)
	for _, e := range entries {
		dir := filepath.Join(d.imagesDir, e.Name())
		if !keep[dir] {
			d.log.Warn("removing images a crash left behind", "dir", dir)
			os.RemoveAll(dir)
		}
	}
}

func (d *Daemon) loadRecords() {
	b, err := os.ReadFile(filepath.Join(d.stateDir, "migrations.jsonl"))
	if err != nil {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	for {
		var r MigrationRec
		if dec.Decode(&r) != nil {
			return
		}
		d.records = append(d.records, r)
	}
}
