package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	"dsmigrate/criu"
	"dsmigrate/internal/api"
	"dsmigrate/internal/migration"
	"dsmigrate/internal/placement"
	"dsmigrate/internal/wire"
	mrt "dsmigrate/runtime"
)

// The data path of a migration (the engine, internal/migration, decides when
// each part runs): image files and the log after the dump, and the resume
// hook after a restore.

const (
	maxImageBytes = 64 << 30
	logName       = "@log" // the process's output log, shipped with the images
)

// stallTimeout: a transfer that makes no progress for this long fails (the
// engine's stall bound, applied here to each frame of the data path).
var stallTimeout = migration.DefaultTimeouts.Stall

var fileRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`) })

// migrateOut moves a process of caller's to another daemon (migrated migrate).
func (d *Daemon) migrateOut(ctx context.Context, req Request, caller api.Owner, event func(Event)) (*MigrationRec, error) {
	p, err := d.getFor(req.ID, caller) // a unique prefix or a name will do
	if err != nil {
		return nil, err
	}
	if !p.Owner.IsRoot() {
		if err := canDumpOthers(); err != nil {
			return nil, api.Errorf(api.KindRefused, "process %s (uid %d) cannot move from this host, and stays here: %v",
				p.ID, p.Owner.UID, err)
		}
	}
	if req.To == "" { // placement picks (place.go)
		pol, err := placement.ParsePolicy(req.Policy)
		if err != nil {
			return nil, err
		}
		to, cost, err := d.target(ctx, p, pol, req.PostCopy, req.MoveIP)
		if err != nil {
			return nil, err
		}
		event(Event{Phase: api.PhasePlaced, Info: describeHost(to, cost, pol)})
		req.To = to
	}
	if req.To == d.advertise || req.To == d.listen {
		return nil, api.Errorf(api.KindRefused, "%s is this host: a process cannot migrate to the host it runs on; "+
			"give another host's daemon with --to (the process runs on here, untouched)", req.To)
	}
	if err := d.checkOut(ctx, req.To, req.MoveIP); err != nil {
		return nil, api.WithKind(api.KindRefused, err)
	}
	if req.PostCopy {
		if err := checkPostCopy(); err != nil {
			return nil, api.WithKind(api.KindRefused, fmt.Errorf("--post-copy refused, nothing was touched: %w", err))
		}
	}
	rec, err := d.engine.Out(ctx, migration.Request{ID: p.ID, To: req.To, MoveIP: req.MoveIP, PostCopy: req.PostCopy}, event)
	d.refillDump() // the next dump's CRIU, now that this one is over
	return rec, err
}

// lazyPipeSize is the pipe size CRIU's lazy dump asks for to serve pages
// (page-pipe.c: PIPE_MAX_SIZE pages); above fs.pipe-max-size it cannot have
// it without CAP_SYS_RESOURCE, which this daemon's root may lack.
const lazyPipeSize = 4 << 20

// checkPostCopy checks that this host can serve a post-copy dump's pages:
// without a big enough pipe CRIU fails to serve the first request and the
// target's copy would get none.
func checkPostCopy() error {
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		return err
	}
	var n int
	fmt.Sscan(string(b), &n)
	if n < lazyPipeSize {
		return fmt.Errorf("fs.pipe-max-size is %d, and CRIU needs pipes of %d bytes to serve pages: run "+
			"`sysctl -w fs.pipe-max-size=%d` on this host (and put it in /etc/sysctl.d to keep it)", n, lazyPipeSize,
			lazyPipeSize)
	}
	return nil
}

// sendImages streams the log and every image file in dir, and says how many
// bytes and files it sent. Each file has stallTimeout to make progress.
func sendImages(ctx context.Context, c *wire.Conn, dir, logPath string) (int64, int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	files := [][2]string{{logName, logPath}}
	for _, e := range entries {
		if e.Type().IsRegular() && e.Name() != criu.LogName {
			files = append(files, [2]string{e.Name(), filepath.Join(dir, e.Name())})
		}
	}
	var total int64
	for _, f := range files {
		n, err := sendFile(ctx, c, f[0], f[1])
		total += n
		if err != nil {
			return total, len(files), err
		}
	}
	c.SetDeadline(migration.Deadline(ctx, stallTimeout))
	return total, len(files), c.WriteMsg(tFilesDone, nil)
}

func sendFile(ctx context.Context, c *wire.Conn, name, path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	c.SetDeadline(migration.Deadline(ctx, stallTimeout))
	if err := c.WriteJSON(tFile, &fileMsg{Name: name, Size: fi.Size()}); err != nil {
		return 0, err
	}
	return c.SendStream(&progress{f: f, c: c, ctx: ctx})
}

// progress moves the connection's deadline on as data flows, either way: a
// stalled peer fails the transfer after stallTimeout, a slow but moving one
// does not.
type progress struct {
	f   *os.File
	c   *wire.Conn
	ctx context.Context
}

func (p *progress) Read(b []byte) (int, error) {
	p.c.SetDeadline(migration.Deadline(p.ctx, stallTimeout))
	return p.f.Read(b)
}

func (p *progress) Write(b []byte) (int, error) {
	p.c.SetDeadline(migration.Deadline(p.ctx, stallTimeout))
	return p.f.Write(b)
}

// recvImages receives the files sendImages sent. Names and sizes come from
// the network: names are checked against a strict pattern (no paths), sizes
// against a total budget of which total bytes (the pages) are spent already.
// A name the page server wrote already is refused (O_EXCL).
func recvImages(ctx context.Context, c *wire.Conn, dir, logPath string, total int64) error {
	for {
		c.SetDeadline(migration.Deadline(ctx, stallTimeout))
		typ, payload, err := c.ReadMsg()
		if err != nil {
			return err
		}
		switch typ {
		case tFilesDone:
			return nil
		case tFile:
		case wire.TypeError:
			return c.DecodeError(payload)
		default:
			return fmt.Errorf("unexpected message %d during transfer", typ)
		}
		var fm fileMsg
		if err := jsonUnmarshal(payload, &fm); err != nil {
			return err
		}
		path := logPath
		if fm.Name != logName {
			if !fileRE().MatchString(fm.Name) {
				return fmt.Errorf("refusing image file name %q", fm.Name)
			}
			path = filepath.Join(dir, fm.Name)
		}
		if fm.Size < 0 || total+fm.Size > maxImageBytes {
			return fmt.Errorf("image too large (%d bytes)", total+fm.Size)
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		n, err := c.RecvStream(&progress{f: f, c: c, ctx: ctx}, fm.Size)
		f.Close()
		if err == nil && n != fm.Size {
			err = fmt.Errorf("file %s: got %d of %d bytes", fm.Name, n, fm.Size)
		}
		if err != nil {
			return err
		}
		total += n
	}
}

// rebind runs the resume hook of process id: after a restore here (moved),
// or after a migration called off once it had prepared.
func (d *Daemon) rebind(id string, moved bool) error {
	p, err := d.get(id)
	if err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(d.advertise)
	return d.command(p, mrt.Command{Op: "resume", Resume: mrt.ResumeInfo{Moved: moved, Host: host}})
}
