package daemon

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"sync"
	"time"

	"dsmigrate/internal/api"
)

// The live view (migrated serve --http ADDR): a web page of the cluster,
// every host of --peers with its processes and DSM ranks and the recent
// migrations as a timeline of their phases, updated every second. The page
// (web/) polls /cluster.json, which this daemon makes by asking each peer
// for what it has, runs and sent ("view") over the daemons' authenticated
// link. It has no authentication of its own: the address must be a
// loopback one, reached from elsewhere by an SSH tunnel (ssh -L), so that
// only those who may log in to the host see it.

//go:embed web
var webFiles embed.FS

// viewRecent is how many of each host's latest migrations the view shows.
const viewRecent = 30

// viewEvery bounds how often the view asks the peers: answers are kept
// this long for every page that asks.
const viewEvery = 700 * time.Millisecond

// CheckHTTPAddr refuses a --http address that is not a loopback one.
func CheckHTTPAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--http %q: want ADDR:PORT, e.g. 127.0.0.1:8077", addr)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("--http %s: the live view has no authentication of its own, so it listens on a loopback "+
			"address only (127.0.0.1:8077); reach it from elsewhere with ssh -L 8077:127.0.0.1:8077 HOST", addr)
	}
	return nil
}

// ClusterView is what /cluster.json says: every host with what it runs,
// and the migrations they sent lately, oldest first.
type ClusterView struct {
	Self       string             `json:"self"`
	Now        time.Time          `json:"now"`
	Hosts      []HostView         `json:"hosts"`
	Migrations []api.MigrationRec `json:"migrations"`
}

// HostView is a host of the view.
type HostView struct {
	api.HostInfo
	Procs []api.ProcInfo `json:"procs"`
}

// view is the cluster as the live view shows it.
func (d *Daemon) view(ctx context.Context) (*ClusterView, error) {
	hosts, err := d.survey(ctx)
	if err != nil {
		return nil, err
	}
	infos := hostInfos(hosts, d.advertise)
	v := &ClusterView{Self: d.advertise, Now: time.Now(), Hosts: make([]HostView, len(infos)),
		Migrations: []api.MigrationRec{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, h := range infos {
		v.Hosts[i] = HostView{HostInfo: h, Procs: []api.ProcInfo{}}
		if h.Error != "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep := d.viewReply()
			if !h.Self {
				var err error
				if rep, err = d.askPeer(ctx, h.Addr, Request{Op: "view"}); err != nil {
					mu.Lock()
					v.Hosts[i].Error = err.Error()
					mu.Unlock()
					return
				}
			}
			mu.Lock()
			defer mu.Unlock()
			v.Hosts[i].Procs = append(v.Hosts[i].Procs, rep.Procs...)
			v.Migrations = append(v.Migrations, rep.Records...)
		}()
	}
	wg.Wait()
	sort.SliceStable(v.Migrations, func(a, b int) bool { return v.Migrations[a].Start.Before(v.Migrations[b].Start) })
	return v, nil
}

// viewReply answers "view": this daemon's processes and its latest
// migrations (root's view: every user's).
func (d *Daemon) viewReply() *Reply {
	d.mu.Lock()
	recs := d.records[max(len(d.records)-viewRecent, 0):]
	recs = append([]MigrationRec(nil), recs...)
	d.mu.Unlock()
	var live []ProcInfo
	for _, p := range d.list(api.Owner{}) {
		if p.State != "migrated" {
			live = append(live, p)
		}
	}
	return &Reply{Procs: live, Records: recs}
}

// askPeer sends req to the daemon at addr and returns its answer.
func (d *Daemon) askPeer(ctx context.Context, addr string, req Request) (*Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, surveyTimeout)
	defer cancel()
	c, err := d.dialPeer(ctx, addr)
	if err != nil {
		return nil, unwrapNet(err)
	}
	defer c.Close()
	return ask(ctx, c, req)
}

// serveHTTP serves the live view on Config.HTTP, if set, until stop.
func (d *Daemon) serveHTTP() (stop func(), err error) {
	if d.httpAddr == "" {
		return func() {}, nil
	}
	lc := net.ListenConfig{} // serve checked the address (CheckHTTPAddr) before anything else

	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp", d.httpAddr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %s for --http: %v; give a free port", d.httpAddr, err)
	}
	static, _ := fs.Sub(webFiles, "web")
	var mu sync.Mutex
	var last []byte
	var lastAt time.Time
	mux := http.NewServeMux()
	mux.Handle("/", http.FileServerFS(static))
	mux.HandleFunc("/cluster.json", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if last == nil || time.Since(lastAt) > viewEvery {
			v, err := d.view(r.Context())
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			last, _ = json.Marshal(v)
			lastAt = time.Now()
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(last)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	d.log.Info("serving the live view", "url", "http://"+l.Addr().String()+"/")
	return func() { srv.Close() }, nil
}
