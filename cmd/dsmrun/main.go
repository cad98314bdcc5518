// Command dsmrun launches dsmshm programs across hosts through their migrated
// daemons, and lists and migrates their ranks.
//
//	dsmrun run --hosts ADDR:PORT[,ADDR:PORT...] -n N [--token-file FILE | --socket PATH] [--encrypt] -- PROGRAM [ARG...]
//	dsmrun run --hostfile FILE [-n N] [--oversubscribe] ... -- PROGRAM [ARG...]
//	dsmrun ps [--json]
//	dsmrun kill JOB
//	dsmrun logs [-f] JOB [RANK]
//	dsmrun migrate JOB RANK --to ADDR:PORT
//	dsmrun history [--json] [JOB]
//
// With a token it can read (root's), dsmrun talks to every daemon directly;
// without, it asks this host's daemon (--socket) to pass each request on,
// and the ranks run as the user who ran dsmrun.
//
// dsmrun keeps no state of its own: every rank is a process of some daemon,
// labelled with its job and rank, so any dsmrun can find a job's ranks by
// asking the daemons.
package main

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"dsmigrate/internal/api"
	"dsmigrate/internal/cliutil"
	"dsmigrate/internal/wire"
	mrt "dsmigrate/runtime"
)

func main() {
	hostFlags := []cli.Flag{
		&cli.StringFlag{Name: "hosts", EnvVars: []string{"MIGRATED_HOSTS"}, Usage: "ADDR:PORT of the daemons, comma-separated"},
		&cli.StringFlag{Name: "token-file", EnvVars: []string{"MIGRATED_TOKEN_FILE"},
			Usage: "the daemons' shared token (root's); without one that can be read, go through this host's daemon as yourself"},
		&cli.StringFlag{Name: "socket", Value: api.DefaultSocket, EnvVars: []string{"MIGRATED_SOCKET"},
			Usage: "this host's daemon, which passes requests on for users without the token"},
	}
	app := &cli.App{
		Name:  "dsmrun",
		Usage: "run and migrate DSM programs across hosts",
		Commands: []*cli.Command{
			{
				Name: "run",
				Usage: "start N ranks of PROGRAM over the hosts (where placement finds room and the least load, or " +
					"by slot with --hostfile) and stream their output",
				ArgsUsage:   "-- PROGRAM [ARG...]",
				Description: hostfileHelp,
				Flags: append([]cli.Flag{
					&cli.IntFlag{Name: "n", Value: 1, Usage: "number of ranks", DefaultText: "1, or the hostfile's slots"},
					&cli.StringFlag{Name: "hostfile", Usage: "FILE of hosts and their slots, one 'ADDR:PORT slots=N' " +
						"a line (format above); instead of --hosts"},
					&cli.BoolFlag{Name: "oversubscribe", Usage: "with --hostfile: allow more ranks than slots " +
						"(those beyond go round-robin over the hosts again)"},
					&cli.IntFlag{Name: "port", Usage: "first TCP port of the ranks", DefaultText: "random"},
					&cli.StringFlag{Name: "rank-ips", Usage: "IP/PREFIX: give rank r the address IP+r of its own, " +
						"so that 'dsmrun migrate --move-ip' carries its connections (TCP repair) instead of rebinding them"},
					&cli.BoolFlag{Name: "encrypt", Usage: "encrypt the ranks' traffic too (integrity is always on)"},
					&cli.StringFlag{Name: "policy", Value: "balanced", Usage: "without --hostfile, how the ranks are " +
						"placed on the hosts: balanced (memory, load and processes), memory, cpu (docs/placement.md), " +
						"or round-robin (rank r on host r mod N, whatever their load)"},
				}, hostFlags...),
				Action: runJob,
			},
			{Name: "ps", Usage: "list running jobs and where their ranks are", Flags: append([]cli.Flag{
				&cli.BoolFlag{Name: "json", Usage: "print JSON"}}, hostFlags...), Action: psJobs},
			{Name: "history", Usage: "every migration of a DSM rank the daemons recorded", ArgsUsage: "[JOB]",
				Flags: append([]cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}}, hostFlags...), Action: history},
			{Name: "migrate", Usage: "move one rank of a running job to another daemon", ArgsUsage: "JOB RANK",
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "to", Usage: "ADDR:PORT of the target daemon; without it the rank's daemon " +
						"picks one among its --peers (docs/placement.md)"},
					&cli.StringFlag{Name: "policy", Value: "balanced", Usage: "without --to: how placement weighs " +
						"the hosts: balanced, memory or cpu"},
					&cli.StringFlag{Name: "move-ip", Usage: "CIDR: an address of the rank's own that moves with it"},
					&cli.BoolFlag{Name: "post-copy", Usage: "resume the rank on the target before its memory has arrived " +
						"(CRIU's lazy pages); if the source host, its daemon or the link fails before the last page " +
						"arrived, the rank is LOST (and its job with it)"},
					&cli.DurationFlag{Name: "timeout", Usage: "give the move up if it has not committed within this " +
						"long (30s, 5m): the rank then runs on where it was", DefaultText: "15m, the daemon's bound"},
					&cli.BoolFlag{Name: "json", Usage: "print the phases, progress and result as JSON lines " +
						"(docs/json/migrated-migrate.md)"},
				}, hostFlags...), Action: migrateRank},
			killJobCommand(hostFlags), logsCommand(hostFlags),
			cliutil.CompletionCommand(), cliutil.ManCommand(),
		},
	}
	cliutil.Setup(app)
	cliutil.Main(app, os.Args)
}

// cluster is the set of daemons a command talks to: directly with the
// cluster token (as root on every host), or, for a user who cannot read
// it, through this host's daemon (api.DialVia), which acts for the user.
type cluster struct {
	hosts  []string
	token  []byte // nil: through socket
	socket string
}

func newCluster(c *cli.Context) (*cluster, error) {
	hs := c.String("hosts")
	if hs == "" {
		return nil, errors.New("no hosts: pass --hosts ADDR:PORT[,...] or set MIGRATED_HOSTS")
	}
	var hosts []string
	for _, h := range strings.Split(hs, ",") {
		h = strings.TrimSpace(h)
		if _, _, err := net.SplitHostPort(h); err != nil {
			return nil, fmt.Errorf("bad host %q in --hosts: want ADDR:PORT", h)
		}
		hosts = append(hosts, h)
	}
	return clusterOf(c, hosts)
}

// clusterOf is the cluster of hosts, reached as c's flags say.
func clusterOf(c *cli.Context, hosts []string) (*cluster, error) {
	cl := &cluster{hosts: hosts, socket: c.String("socket")}
	tf := c.String("token-file")
	if tf == "" {
		return cl, nil
	}
	var err error
	cl.token, err = wire.LoadToken(tf)
	if errors.Is(err, os.ErrPermission) && os.Geteuid() != 0 {
		// A user: the token is root's. This host's daemon acts for us.
		return cl, nil
	}
	if err != nil {
		return nil, err
	}
	return cl, nil
}

// dial reaches the daemon at host.
func (cl *cluster) dial(host string) (*api.Client, error) {
	if cl.token == nil {
		c, err := api.DialVia(cl.socket, host)
		if err != nil {
			return nil, fmt.Errorf("%v (without a token dsmrun goes through this host's daemon; root may "+
				"pass --token-file FILE to reach the daemons directly)", err)
		}
		return c, nil
	}
	return api.DialRemote(host, cl.token)
}

func (cl *cluster) do(host string, req api.Request) (*api.Reply, error) {
	c, err := cl.dial(host)
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// rank is one process of a job, where it runs now.
type rank struct {
	n    int
	mu   sync.Mutex
	host string
	id   string
}

func (r *rank) where() (string, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.host, r.id
}

func runJob(c *cli.Context) error {
	var cl *cluster
	var slots []hostSlots // --hostfile's
	var err error
	if f := c.String("hostfile"); f != "" {
		if hostsOnCommandLine(os.Args[1:]) {
			return cliutil.Usage(c, "--hosts and --hostfile together: give the hosts one way")
		}
		if slots, err = readHostfile(f); err != nil {
			return cliutil.Usage(c, "--hostfile: %v", err)
		}
		hosts := make([]string, len(slots))
		for i, h := range slots {
			hosts[i] = h.host
		}
		cl, err = clusterOf(c, hosts)
	} else {
		cl, err = newCluster(c)
	}
	if err != nil {
		return err
	}
	n := c.Int("n")
	if slots != nil && !c.IsSet("n") {
		n = slotCount(slots)
	}
	if n < 1 || n > 1024 {
		return fmt.Errorf("-n %d: want 1..1024 ranks", n)
	}
	if c.NArg() == 0 {
		return errors.New("no program: dsmrun run --hosts ... -n N -- PROGRAM [ARG...]")
	}
	ips, err := rankIPs(c.String("rank-ips"), n)
	if err != nil {
		return err
	}
	var place []string // rank r runs on place[r]
	if slots != nil {
		if place, err = placeBySlot(slots, n, c.Bool("oversubscribe")); err != nil {
			return cliutil.Usage(c, "%s: %v", c.String("hostfile"), err)
		}
	} else if place, err = placeRanks(cl, n, c.String("policy"), ips); err != nil {
		return err
	}
	port := c.Int("port")
	if port == 0 {
		// Below Linux's ephemeral range (32768-60999), where outgoing
		// connections would take the ranks' ports.
		p, _ := rand.Int(rand.Reader, big.NewInt(int64(32000-n-20000)))
		port = 20000 + int(p.Int64())
	}
	if port < 1024 || port+n > 65535 {
		return fmt.Errorf("--port %d: the ranks need ports %d..%d", port, port, port+n-1)
	}
	jb := make([]byte, 4)
	rand.Read(jb)
	job := hex.EncodeToString(jb)
	// The job's secret, its ranks' only proof to each other that they are
	// of this job: new for every job, sent to each rank's daemon in the run
	// request (wire encrypts it) and handed to the rank on a pipe, never
	// printed. dsmrun has no use for it once the ranks have started.
	secret := make([]byte, mrt.SecretLen)
	if _, err := rand.Read(secret); err != nil {
		return fmt.Errorf("making the job's secret: %w", err)
	}
	defer clear(secret)
	peers := make([]string, n)
	for r := range n {
		h, _, _ := net.SplitHostPort(place[r])
		if ips != nil {
			h = ips[r].Addr().String()
		}
		peers[r] = net.JoinHostPort(h, fmt.Sprint(port+r))
	}
	dir, _ := os.Getwd()
	ranks := make([]*rank, n)
	killAll := func() {
		var wg sync.WaitGroup
		for _, rk := range ranks {
			if rk == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				h, id := rk.where()
				cl.do(h, api.Request{Op: "kill", ID: id})
				if ips != nil {
					cl.do(h, api.Request{Op: "delip", MoveIP: ips[rk.n].String()})
				}
			}()
		}
		wg.Wait()
	}
	// Every rank's address exists before any rank starts: a dial to an
	// address nobody holds yet waits for ARP to give up instead of failing
	// at once, which would slow the job's start by seconds.
	for r := range ips {
		host := place[r]
		if _, err := cl.do(host, api.Request{Op: "addip", MoveIP: ips[r].String()}); err != nil {
			killAll()
			return fmt.Errorf("giving rank %d the address %s on %s: %v", r, ips[r], host, err)
		}
		ranks[r] = &rank{n: r, host: host} // so that killAll removes the address
	}
	// The ranks' settings come from the flags only: an encryption setting
	// or a secret's descriptor in dsmrun's own environment is not theirs.
	base := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, mrt.EnvEncrypt+"=") || strings.HasPrefix(kv, mrt.EnvSecretFD+"=")
	})
	for r := range n {
		host := place[r]
		env := append(slices.Clip(base), "DSM_JOB="+job, fmt.Sprintf("DSM_RANK=%d", r), fmt.Sprintf("DSM_SIZE=%d", n),
			"DSM_PEERS="+strings.Join(peers, ","), "GODEBUG=multipathtcp=0")
		if ips != nil {
			env = append(env, mrt.EnvBind+"="+ips[r].Addr().String())
		}
		if c.Bool("encrypt") {
			env = append(env, mrt.EnvEncrypt+"=1")
		}
		own := ""
		if ips != nil {
			own = ips[r].String()
		}
		rep, err := cl.do(host, api.Request{Op: "run", Name: fmt.Sprintf("%s.r%d", job, r), Argv: c.Args().Slice(),
			Env: env, Dir: dir, Job: job, Rank: r, Secret: secret, OwnIP: own})
		if err != nil {
			killAll()
			return fmt.Errorf("starting rank %d on %s: %v", r, host, err)
		}
		ranks[r] = &rank{n: r, host: host, id: rep.ID}
	}
	clear(secret)
	fmt.Fprintf(os.Stderr, "job: %s\n", job)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "dsmrun: %v: stopping job %s\n", s, job)
		killAll()
		os.Exit(130)
	}()

	var out sync.Mutex
	var stopping atomic.Bool
	codes := make(chan [2]int, n)
	for _, rk := range ranks {
		go func() {
			code, err := follow(cl, rk, fmt.Sprintf("[%d] ", rk.n), &out, &stopping)
			if err != nil {
				fmt.Fprintf(os.Stderr, "dsmrun: %v\n", err)
				code = 255
			}
			codes <- [2]int{rk.n, code}
		}()
	}
	status := 0
	for range n {
		rc := <-codes
		if rc[1] != 0 && status == 0 {
			status = rc[1]
			fmt.Fprintf(os.Stderr, "dsmrun: rank %d failed (exit %d): stopping the others\n", rc[0], rc[1])
			stopping.Store(true)
			go killAll()
		}
	}
	killAll() // the ranks have ended: forget their records on the daemons
	if status != 0 {
		return cli.Exit(fmt.Sprintf("job %s failed", job), status)
	}
	return nil
}

// followRetry is how long follow looks for a rank it lost touch with: its
// daemon died or restarts (the rank itself runs on under its shim).
const followRetry = 2 * time.Minute

// follow streams a rank's output, each line behind prefix, wherever it
// moves, and returns its exit code (255 when stopping), or an error when it
// lost the rank for followRetry. A daemon that dies or restarts does not end
// the rank: follow finds it again, on its host or wherever a migration took
// it meanwhile, and goes on from the same offset (the log moves with it).
func follow(cl *cluster, rk *rank, prefix string, out *sync.Mutex, stopping *atomic.Bool) (int, error) {
	pw := &prefixWriter{prefix: prefix, mu: out}
	var off int64
	var lost time.Time
	for {
		host, id := rk.where()
		c, err := cl.dial(host)
		if err == nil {
			cw := &cliutil.CountWriter{W: pw}
			var rep *api.Reply
			rep, err = c.Stream(api.Request{Op: "follow", ID: id, Offset: off}, cw, nil)
			off += cw.N
			if err == nil {
				lost = time.Time{}
				if rep.State == "migrated" {
					rk.mu.Lock()
					rk.host = rep.MovedTo
					rk.mu.Unlock()
					continue
				}
				pw.flush()
				return rep.ExitCode, nil
			}
		}
		if stopping.Load() {
			return 255, nil
		}
		if lost.IsZero() {
			lost = time.Now()
			fmt.Fprintf(os.Stderr, "dsmrun: rank %d on %s: %v; looking for it again\n", rk.n, host, err)
		} else if time.Since(lost) > followRetry {
			pw.flush()
			return 255, api.WithKind(api.KindUnreachable, fmt.Errorf("rank %d: lost for %v: %w", rk.n, followRetry, err))
		}
		time.Sleep(300 * time.Millisecond)
		if h := cl.locate(id); h != "" {
			rk.mu.Lock()
			rk.host = h
			rk.mu.Unlock()
		}
	}
}

// locate returns the daemon that lists process id as settled there (not
// arriving), or "".
func (cl *cluster) locate(id string) string {
	for _, h := range cl.hosts {
		rep, err := cl.do(h, api.Request{Op: "ps"})
		if err != nil {
			continue
		}
		for _, p := range rep.Procs {
			if p.ID == id && p.State != "incoming" {
				return h
			}
		}
	}
	return ""
}

// prefixWriter writes whole lines, each behind a prefix.
type prefixWriter struct {
	prefix string
	mu     *sync.Mutex
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		p.mu.Lock()
		os.Stdout.WriteString(p.prefix + string(p.buf[:i+1]))
		p.mu.Unlock()
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

func (p *prefixWriter) flush() {
	if len(p.buf) > 0 {
		p.Write([]byte("\n"))
	}
}

// Job is a running job as `dsmrun ps --json` prints it.
type Job struct {
	ID    string     `json:"id"`
	Ranks []RankInfo `json:"ranks"`
}

// RankInfo is one rank of a Job.
type RankInfo struct {
	Rank   int    `json:"rank"`
	Host   string `json:"host"`
	State  string `json:"state"`
	PID    int    `json:"pid"`
	ProcID string `json:"proc_id"`
}

// jobs asks every daemon for its processes and groups the ranks by job.
func (cl *cluster) jobs() ([]Job, error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	byJob := map[string]*Job{}
	var errs []error
	for _, h := range cl.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := cl.do(h, api.Request{Op: "ps"})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, &hostError{h, err})
				return
			}
			for _, p := range rep.Procs {
				if p.Job == "" {
					continue
				}
				j := byJob[p.Job]
				if j == nil {
					j = &Job{ID: p.Job}
					byJob[p.Job] = j
				}
				j.Ranks = append(j.Ranks, RankInfo{Rank: p.Rank, Host: h, State: p.State, PID: p.PID, ProcID: p.ID})
			}
		}()
	}
	wg.Wait()
	out := make([]Job, 0, len(byJob))
	for _, j := range byJob {
		sort.Slice(j.Ranks, func(a, b int) bool { return j.Ranks[a].Rank < j.Ranks[b].Rank })
		out = append(out, *j)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out, errors.Join(errs...)
}

func psJobs(c *cli.Context) (err error) {
	cl, err := newCluster(c)
	if err != nil {
		return err
	}
	jobs, down := cl.jobs()
	// Reachability: the hosts that did not answer are named on stderr and
	// the command exits 6 after printing what the others said.
	defer func() {
		if err == nil {
			err = unreachable(cl, down, "the list lacks their ranks")
		}
	}()
	if c.Bool("json") {
		if jobs == nil {
			jobs = []Job{}
		}
		return cliutil.PrintJSON(jobs)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tRANK\tHOST\tPID\tSTATE\tPROC")
	for _, j := range jobs {
		for _, r := range j.Ranks {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\n", j.ID, r.Rank, r.Host, r.PID, r.State, r.ProcID)
		}
	}
	return tw.Flush()
}

func migrateRank(c *cli.Context) error {
	if c.NArg() != 2 {
		return cliutil.Usage(c, "usage: dsmrun migrate JOB RANK [--to ADDR:PORT] [--move-ip CIDR] [--post-copy] [--timeout D]")
	}
	if c.Duration("timeout") < 0 {
		return cliutil.Usage(c, "--timeout %v: want a positive duration such as 30s or 5m", c.Duration("timeout"))
	}
	cl, err := newCluster(c)
	if err != nil {
		return err
	}
	job := c.Args().Get(0)
	var rankN int
	if _, err := fmt.Sscan(c.Args().Get(1), &rankN); err != nil || rankN < 0 {
		return cliutil.Usage(c, "bad rank %q: want a rank number (0, 1, ...)", c.Args().Get(1))
	}
	jobs, _ := cl.jobs()
	for _, j := range jobs {
		if j.ID != job {
			continue
		}
		// One rank of a job moves at a time: its peers wait for a rank that
		// is away, and a rank that is away cannot take part in another's
		// move (the rank also refuses to prepare while a peer is away).
		for _, r := range j.Ranks {
			if r.Rank != rankN && r.State != "running" {
				return api.Errorf(api.KindRefused, "rank %d of job %s is %s: move one rank of a job at a time "+
					"(try again when it runs)", r.Rank, job, r.State)
			}
		}
		for _, r := range j.Ranks {
			if r.Rank != rankN {
				continue
			}
			cli, err := cl.dial(r.Host)
			if err != nil {
				return err
			}
			if !c.Bool("json") {
				fmt.Fprintf(os.Stderr, "migrating job %s rank %d: %s -> %s\n", job, rankN, r.Host,
					cmp.Or(c.String("to"), "the host placement picks"))
			}
			return cliutil.Migrate(cli, api.Request{Op: "migrate", ID: r.ProcID, To: c.String("to"),
				MoveIP: c.String("move-ip"), PostCopy: c.Bool("post-copy"), Timeout: c.Duration("timeout"),
				Policy: c.String("policy")}, c.Bool("json"))
		}
		return api.Errorf(api.KindNotFound, "job %s has no rank %d", job, rankN)
	}
	return api.Errorf(api.KindNotFound, "no running job %q: `dsmrun ps` lists them", job)
}

// history gathers the migration records of DSM ranks from every daemon (each
// keeps those it sent), oldest first, optionally for one job.
func history(c *cli.Context) (err error) {
	cl, err := newCluster(c)
	if err != nil {
		return err
	}
	job := c.Args().First()
	var mu sync.Mutex
	var wg sync.WaitGroup
	var recs []api.MigrationRec
	var errs []error
	for _, h := range cl.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := cl.do(h, api.Request{Op: "history"})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, &hostError{h, err})
				return
			}
			for _, r := range rep.Records {
				if r.Job != "" && (job == "" || r.Job == job) {
					recs = append(recs, r)
				}
			}
		}()
	}
	wg.Wait()
	// Reachability: the hosts that did not answer are named on stderr and
	// the command exits 6 after printing what the others said.
	defer func() {
		if err == nil {
			err = unreachable(cl, errors.Join(errs...), "the history lacks their records")
		}
	}()
	sort.Slice(recs, func(a, b int) bool { return recs[a].Start.Before(recs[b].Start) })
	if c.Bool("json") {
		return cliutil.PrintJSON(cliutil.Migrations(recs))
	}
	api.PrintRecords(os.Stdout, recs)
	return nil
}

// rankIPs expands --rank-ips IP/PREFIX into one address per rank.
func rankIPs(spec string, n int) ([]netip.Prefix, error) {
	if spec == "" {
		return nil, nil
	}
	first, err := netip.ParsePrefix(spec)
	if err != nil || !first.Addr().Is4() {
		return nil, fmt.Errorf("--rank-ips %q: want IPv4/PREFIX, e.g. 10.77.0.100/24", spec)
	}
	out := make([]netip.Prefix, n)
	a := first.Addr()
	for r := range n {
		if !first.Masked().Contains(a) {
			return nil, fmt.Errorf("--rank-ips %s: %d ranks do not fit in the subnet", spec, n)
		}
		out[r] = netip.PrefixFrom(a, first.Bits())
		a = a.Next()
	}
	return out, nil
}
