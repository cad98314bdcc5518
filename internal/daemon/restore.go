package daemon

import (
	"context"
	"path/filepath"
	"time"

	"dsmigrate/internal/shim"
)

// restoreProc restores the images in dir under a shim of its own, which is
// the restored tree's parent and appends its output (a fresh pipe, inherited
// in place of the one named key) to logPath; logPath's directory is the
// shim's. The tree is left STOPPED: the caller continues it (signalTree
// SIGCONT). The returned Proc is registered nowhere and has no record yet
// (saveProc); its watcher runs. A failed CRIU restore is a *criu.Error.
func (d *Daemon) restoreProc(id, name string, argv []string, started time.Time, moves int, key, dir, logPath string, tcp bool) (*Proc, error) {
	// CRIU's own deadline is restoreTimeout; the shim's start is bounded a
	// little later, so that CRIU's error comes back rather than a timeout.
	ctx, cancel := context.WithTimeout(context.Background(), restoreTimeout+30*time.Second)
	defer cancel()
	t0 := time.Now()
	c, st, err := shim.Start(ctx, shimExe, shim.Spec{ID: id, Dir: filepath.Dir(logPath), Restore: &shim.RestoreSpec{
		CRIU: d.criu.Path, ImagesDir: dir, PipeKey: key, TCP: tcp, Timeout: restoreTimeout}})
	if err != nil {
		return nil, err
	}
	if rs := st.Restore; rs != nil {
		d.log.Info("criu restore", "id", id, "took", time.Since(t0), "criu_restore", rs.Restore, "forking", rs.Forking,
			"pages", rs.PagesRestored, "shim", st.ShimPID)
	}
	p := newProc(id, name, argv, started)
	p.Moves, p.logPath, p.pid, p.shimPID, p.state, p.pipeKey, p.shim = moves, logPath, st.PID, st.ShimPID, "stopped",
		st.PipeKey, c
	go d.watch(p)
	return p, nil
}
