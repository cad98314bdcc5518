package main

// dsmrun kill, dsmrun logs, and what the commands that ask every host say
// of the hosts that did not answer.

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"

	"dsmigrate/internal/api"
	"dsmigrate/internal/cliutil"
)

// hostError is a host that did not answer a request every host gets.
type hostError struct {
	host string
	err  error
}

func (e *hostError) Error() string {
	if msg := e.err.Error(); strings.Contains(msg, e.host) {
		return msg
	}
	return e.host + ": " + e.err.Error()
}

func (e *hostError) Unwrap() error { return e.err }

// hostErrors are the *hostError in err (one, or joined).
func hostErrors(err error) []*hostError {
	var out []*hostError
	var walk func(error)
	walk = func(err error) {
		var he *hostError
		switch u := err.(type) {
		case nil:
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		default:
			if errors.As(err, &he) {
				out = append(out, he)
			} else {
				out = append(out, &hostError{err: err})
			}
		}
	}
	walk(err)
	return out
}

// unreachable names on stderr, one a line, each host that did not answer
// (err: from cluster.jobs or gathered like it) and returns the error a
// command that did what it could then ends with (exit status 6), or nil if
// every host answered. so is what that means for the command's result.
func unreachable(cl *cluster, err error, so string) error {
	hes := hostErrors(err)
	if len(hes) == 0 {
		return nil
	}
	var names []string
	for _, he := range hes {
		fmt.Fprintf(os.Stderr, "dsmrun: %v\n", he)
		names = append(names, he.host)
	}
	return api.Errorf(api.KindUnreachable, "%s of %d did not answer (%s): %s; `migrated check --to ADDR:PORT` "+
		"tells what is wrong with one", cliutil.Plural(len(hes), "host"), len(cl.hosts), strings.Join(names, ", "), so)
}

// jobRanks is the ranks of job the hosts list, one entry per rank (where it
// runs: a rank arriving on a host is listed by its source too), by rank;
// and the hosts that did not answer (cluster.jobs).
func (cl *cluster) jobRanks(job string) ([]RankInfo, error) {
	jobs, err := cl.jobs()
	for _, j := range jobs {
		if j.ID != job {
			continue
		}
		var out []RankInfo
		for _, r := range j.Ranks {
			if n := len(out); n > 0 && out[n-1].Rank == r.Rank {
				if out[n-1].State == "incoming" {
					out[n-1] = r
				}
				continue
			}
			out = append(out, r)
		}
		return out, err
	}
	return nil, err
}

// killTimeout is how long kill waits for a rank that is migrating: the
// daemons kill a process only when it has settled on one host.
const killTimeout = time.Minute

func killJobCommand(hostFlags []cli.Flag) *cli.Command {
	return &cli.Command{
		Name:  "kill",
		Usage: "kill every rank of a job, wherever it is, and forget them",
		Description: "Kills each rank of JOB (and its children) on the host where it now runs, and prints what it\n" +
			"killed per host. A rank that is migrating is killed when the move is over.\n" +
			"Exit status 3: no rank of JOB on the hosts; 6: a host did not answer (named on stderr; the\n" +
			"ranks on the others are killed).",
		ArgsUsage: "JOB",
		Flags: append([]cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print what was killed as JSON " +
			"(docs/json/dsmrun-kill.md)"}}, hostFlags...),
		Action: killJob,
	}
}

// killedJSON is what dsmrun kill --json prints.
type killedJSON struct {
	Job    string     `json:"job"`
	Killed []RankInfo `json:"killed"` // as they were when killed, by rank
}

func killJob(c *cli.Context) error {
	if c.NArg() != 1 {
		return cliutil.Usage(c, "usage: dsmrun kill JOB")
	}
	cl, err := newCluster(c)
	if err != nil {
		return err
	}
	job := c.Args().First()
	killed := map[string][]RankInfo{} // host: the ranks killed there
	var mu sync.Mutex
	var failed []error
	var down error
	found := false
	for deadline := time.Now().Add(killTimeout); ; time.Sleep(300 * time.Millisecond) {
		jobs, err := cl.jobs()
		down = err
		var ranks []RankInfo
		for _, j := range jobs {
			if j.ID == job {
				ranks = j.Ranks
			}
		}
		found = found || len(ranks) > 0
		var moving []string
		var wg sync.WaitGroup
		for _, r := range ranks {
			if r.State == "migrating" || r.State == "incoming" {
				moving = append(moving, fmt.Sprintf("rank %d (%s on %s)", r.Rank, r.State, r.Host))
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := cl.do(r.Host, api.Request{Op: "kill", ID: r.ProcID})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case api.KindOf(err) == api.KindNotFound:
					// Gone meanwhile (its dsmrun run stopped it).
				case err != nil:
					failed = append(failed, fmt.Errorf("killing rank %d on %s: %w", r.Rank, r.Host, err))
				default:
					killed[r.Host] = append(killed[r.Host], r)
				}
			}()
		}
		wg.Wait()
		if len(moving) == 0 || len(failed) > 0 {
			break
		}
		if time.Now().After(deadline) {
			failed = append(failed, fmt.Errorf("%s still migrating after %v: run `dsmrun kill %s` again "+
				"when `dsmrun ps` shows it settled", strings.Join(moving, ", "), killTimeout, job))
			break
		}
	}
	if c.Bool("json") {
		out := killedJSON{Job: job, Killed: []RankInfo{}}
		for _, rs := range killed {
			out.Killed = append(out.Killed, rs...)
		}
		sort.Slice(out.Killed, func(a, b int) bool { return out.Killed[a].Rank < out.Killed[b].Rank })
		if err := cliutil.PrintJSON(out); err != nil {
			return err
		}
	}
	for _, h := range cl.hosts { // jobs asks these only
		rs := killed[h]
		if len(rs) == 0 || c.Bool("json") {
			continue
		}
		sort.Slice(rs, func(a, b int) bool { return rs[a].Rank < rs[b].Rank })
		var what []string
		for _, r := range rs {
			w := fmt.Sprintf("rank %d", r.Rank)
			if r.State != "running" {
				w += " (" + r.State + ")"
			}
			what = append(what, w)
		}
		fmt.Printf("%s: killed %s\n", h, strings.Join(what, ", "))
	}
	if len(failed) > 0 {
		for _, e := range failed[1:] {
			fmt.Fprintf(os.Stderr, "dsmrun: %v\n", e)
		}
		if err := unreachable(cl, down, "ranks of the job may run there still"); err != nil {
			fmt.Fprintf(os.Stderr, "dsmrun: %v\n", err)
		}
		return failed[0]
	}
	if down != nil {
		return unreachable(cl, down, "ranks of the job may run there still")
	}
	if !found {
		return api.Errorf(api.KindNotFound, "no job %q on %s: `dsmrun ps` lists the jobs", job, strings.Join(cl.hosts, ", "))
	}
	return nil
}

func logsCommand(hostFlags []cli.Flag) *cli.Command {
	return &cli.Command{
		Name:  "logs",
		Usage: "print the output of a job's ranks since they started, across migrations",
		Description: "With RANK, prints that rank's output as it wrote it; without, every rank's, rank after rank,\n" +
			"each line behind \"[RANK] \" as `dsmrun run` shows it. With -f, goes on printing what the ranks\n" +
			"write, following each wherever it moves, until they exit.\n" +
			"Exit status 3: no such job or rank on the hosts; 6: a host did not answer (named on stderr).",
		ArgsUsage: "JOB [RANK]",
		Flags: append([]cli.Flag{&cli.BoolFlag{Name: "follow", Aliases: []string{"f"},
			Usage: "go on printing what the ranks write, wherever they move, until they exit"}}, hostFlags...),
		Action: jobLogs,
	}
}

func jobLogs(c *cli.Context) error {
	if c.NArg() < 1 || c.NArg() > 2 {
		return cliutil.Usage(c, "usage: dsmrun logs [-f] JOB [RANK]")
	}
	one := -1
	if c.NArg() == 2 {
		n, err := strconv.Atoi(c.Args().Get(1))
		if err != nil || n < 0 {
			return cliutil.Usage(c, "bad rank %q: want a rank number (0, 1, ...)", c.Args().Get(1))
		}
		one = n
	}
	cl, err := newCluster(c)
	if err != nil {
		return err
	}
	job := c.Args().First()
	ranks, down := cl.jobRanks(job)
	if len(ranks) == 0 {
		if down != nil {
			return unreachable(cl, down, "the job may be there")
		}
		return api.Errorf(api.KindNotFound, "no job %q on %s: `dsmrun ps` lists the jobs", job, strings.Join(cl.hosts, ", "))
	}
	if one >= 0 {
		var sel []RankInfo
		for _, r := range ranks {
			if r.Rank == one {
				sel = append(sel, r)
			}
		}
		if len(sel) == 0 {
			if down != nil {
				return unreachable(cl, down, "the rank may be there")
			}
			return api.Errorf(api.KindNotFound, "job %s has no rank %d on the hosts (it has ranks %d-%d)", job, one,
				ranks[0].Rank, ranks[len(ranks)-1].Rank)
		}
		ranks, down = sel, nil // the rank was found: the other hosts do not matter
	}
	prefix := func(r RankInfo) string {
		if one >= 0 {
			return ""
		}
		return fmt.Sprintf("[%d] ", r.Rank)
	}
	var out sync.Mutex
	var failed []error
	if c.Bool("follow") {
		var wg sync.WaitGroup
		var never atomic.Bool
		for _, r := range ranks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, err := follow(cl, &rank{n: r.Rank, host: r.Host, id: r.ProcID}, prefix(r), &out, &never)
				out.Lock()
				defer out.Unlock()
				if err != nil {
					failed = append(failed, err)
					return
				}
				fmt.Fprintf(os.Stderr, "dsmrun: rank %d of job %s exited with status %d\n", r.Rank, job, code)
			}()
		}
		wg.Wait()
	} else {
		for _, r := range ranks {
			if err := rankLog(cl, r, prefix(r), &out); err != nil {
				failed = append(failed, fmt.Errorf("rank %d: %w", r.Rank, err))
			}
		}
	}
	for _, e := range failed[min(1, len(failed)):] {
		fmt.Fprintf(os.Stderr, "dsmrun: %v\n", e)
	}
	if u := unreachable(cl, down, "the output lacks the ranks there"); u != nil {
		if len(failed) > 0 {
			fmt.Fprintf(os.Stderr, "dsmrun: %v\n", u)
		} else {
			return u
		}
	}
	if len(failed) > 0 {
		return failed[0]
	}
	return nil
}

// rankLog prints a rank's output so far, each line behind prefix, from the
// host where it is (a rank that moves meanwhile is looked for again).
func rankLog(cl *cluster, r RankInfo, prefix string, out *sync.Mutex) error {
	host := r.Host
	for try := 0; ; try++ {
		c, err := cl.dial(host)
		if err != nil {
			return err
		}
		pw := &prefixWriter{prefix: prefix, mu: out}
		_, err = c.Stream(api.Request{Op: "logs", ID: r.ProcID}, pw, nil)
		if api.KindOf(err) == api.KindNotFound && try < 3 {
			if h := cl.locate(r.ProcID); h != "" {
				host = h
				continue
			}
		}
		pw.flush()
		return err
	}
}
