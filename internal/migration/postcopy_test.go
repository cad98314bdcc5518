package migration

// Post-copy (Request.PostCopy) in the world of world_test.go: the source's
// CRIU serves the stopped tree's memory after the dump, the target's
// lazy-pages fetches it page by page over the page connection (a relay
// goroutine on each daemon, as internal/daemon/lazy.go), from the restore on
// and after the resume. Besides the properties of every run (problems), the
// world checks at every step that no copy runs on zeros (lazy-pages ended
// while its copy lived with pages missing: the target must kill the copy
// before it stops lazy-pages), that the target does not resume a copy whose
// page stream it knows has failed, that the source neither continues its
// tree after the commit or while CRIU holds it, nor kills it (or ends its
// CRIU) while the target's copy still needs pages from a stream that works.
// After the commit the process ends running on the target with every page,
// or lost on both hosts.

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"dsmigrate/internal/api"
)

// knownPostCopy are the engine bugs the post-copy tests show, by problem
// kind, each with the test of knownBugs that shows it alone. A case of the
// broader tests whose problems are all of these kinds logs them and passes
// (unless DSM_MIGRATION_BUGS=1).
var knownPostCopy = map[string]string{}

// checkPostCopy is checkKnown, less the problems of knownPostCopy's kinds.
func checkPostCopy(t *testing.T, probs []string) {
	t.Helper()
	var rest, known []string
	for _, p := range probs {
		kind, _, _ := strings.Cut(p, ": ")
		if test, ok := knownPostCopy[kind]; ok && os.Getenv("DSM_MIGRATION_BUGS") == "" {
			known = append(known, fmt.Sprintf("%s (%s: %s)", p, test, knownBugs[test]))
		} else {
			rest = append(rest, p)
		}
	}
	for _, k := range known {
		t.Logf("KNOWN ENGINE BUG: %s", k)
	}
	checkKnown(t, rest)
}

var pcVariants = []variant{{name: "plain"}, {name: "move-ip", moveIP: true}, {name: "hooks", hooks: true}}

// pcCfg: post-copy, two pages (so that a break can come between them).
func pcCfg(v variant) worldCfg {
	c := v.cfg()
	c.postCopy, c.pages = true, 2
	return c
}

// lostProperly checks a process lost after the commit: the target's copy
// was killed (Procs.Lose) before its lazy-pages was stopped.
func lostProperly(w *world) []string {
	if !w.lostOnBoth() {
		return nil
	}
	lose, stop := slices.Index(w.pcEvent, "lose"), slices.Index(w.pcEvent, "stop")
	if lose < 0 || stop >= 0 && stop < lose {
		return []string{fmt.Sprintf("order: lazy-pages stopped before the lost copy was killed: %v", w.pcEvent)}
	}
	return nil
}

// TestPostCopy: the process resumes on the target before its memory has
// arrived, the pages follow, then the source kills its stopped tree; nothing
// is left behind.
func TestPostCopy(t *testing.T) {
	for _, v := range pcVariants {
		t.Run(v.name, func(t *testing.T) {
			w := run(t, pcCfg(v), nil, nil)
			defer dumpTrace(t, w)
			if p := w.problems(w.B()); len(p) > 0 {
				t.Fatalf("%s", strings.Join(p, "\n"))
			}
			if w.where() != w.B() {
				t.Fatalf("the process does not run on B: %s", w.describe())
			}
			if w.outErr != nil || w.outRec == nil || w.outRec.Outcome != "ok" {
				t.Fatalf("Out: %+v, %v", w.outRec, w.outErr)
			}
			if want := []string{"resume", "page", "page"}; !slices.Equal(w.pcEvent, want) {
				t.Errorf("target events %v, want %v (it resumes before its memory arrives)", w.pcEvent, want)
			}
			var phases []string
			for _, p := range w.outRec.Phases {
				phases = append(phases, p.Phase)
			}
			want := []string{"freeze", "dump", "transfer", "restore", "resume", "pages"}
			switch {
			case v.moveIP:
				want = []string{"freeze", "dump", "transfer", "network", "restore", "resume", "pages"}
			case v.hooks:
				want = []string{"prepare", "freeze", "dump", "transfer", "restore", "resume", "rebind", "pages"}
			}
			if !slices.Equal(phases, want) {
				t.Errorf("phases %v, want %v", phases, want)
			}
			r := w.outRec
			if !r.PostCopy || r.LastPage <= 0 || r.Downtime <= 0 || r.Bytes < 2*pageBytes {
				t.Errorf("record: post-copy %v, last page %v, downtime %v, bytes %d", r.PostCopy, r.LastPage, r.Downtime, r.Bytes)
			}
			if lp := w.targetLazy(); lp == nil || lp.state != "done" || lp.got != 2 {
				t.Errorf("lazy-pages on B: %+v", lp)
			}
			if len(w.A().sessions) != 1 || !w.A().sessions[0].complete {
				t.Errorf("CRIU's session on A did not end with every page served: %+v", w.A().sessions)
			}
			if c := w.pageConn(); c == nil || !c.closed[0] || !c.closed[1] {
				t.Errorf("the page connection is not closed: %+v", c)
			}
		})
	}
}

// pcPoints are the fault points a post-copy migration passes, per side.
func pcPoints(t *testing.T, v variant) (source, target []string) {
	cfg := pcCfg(v)
	cfg.faults = map[string]string{}
	w := run(t, cfg, nil, nil)
	for _, p := range w.faultsSeen {
		if strings.HasPrefix(p, SideSource+"-") {
			source = append(source, p)
		} else {
			target = append(target, p)
		}
	}
	return source, target
}

// TestPostCopyFaultPoints fails, then crashes (and restarts) a daemon at
// every fault point of a post-copy migration: before the commit the process
// ends running on the source, after it on the target with every page or
// lost on both hosts (never on zeros, never twice, nothing left).
func TestPostCopyFaultPoints(t *testing.T) {
	for _, v := range pcVariants {
		source, target := pcPoints(t, v)
		for _, step := range []string{"pages", "confirm", "kill"} {
			if !slices.Contains(source, Point(SideSource, "before", step)) {
				t.Fatalf("%s: no fault point before the source's %s: %v", v.name, step, source)
			}
		}
		for _, step := range []string{"restore", "resume", "pages", "cleanup"} {
			if !slices.Contains(target, Point(SideTarget, "before", step)) {
				t.Fatalf("%s: no fault point before the target's %s: %v", v.name, step, target)
			}
		}
		if slices.Contains(target, Point(SideTarget, "before", "pages")) &&
			slices.Index(target, Point(SideTarget, "before", "pages")) < slices.Index(target, Point(SideTarget, "before", "resume")) {
			t.Fatalf("%s: the target waits for its pages before it resumes: %v", v.name, target)
		}
		for _, pts := range [][]string{source, target} {
			commit := slices.Index(pts, Point(SideSource, "after", "commit"))
			if commit < 0 {
				commit = slices.Index(pts, Point(SideTarget, "after", "await-commit"))
			}
			for i, p := range pts {
				for _, mode := range []string{"fail", "crash"} {
					t.Run(fmt.Sprintf("%s/%s/%s", v.name, mode, p), func(t *testing.T) {
						cfg := pcCfg(v)
						cfg.faults = map[string]string{p: mode}
						w := run(t, cfg, nil, nil)
						defer dumpTrace(t, w)
						want := w.B()
						if i < commit {
							want = w.A()
						}
						probs := append(w.problems(want), lostProperly(w)...)
						if len(cfg.faults) != 0 {
							probs = append(probs, "the fault point was not passed")
						}
						if w.lostOnBoth() {
							t.Logf("the process was lost (target events %v); Out: %+v", w.pcEvent, w.outRec)
						}
						checkPostCopy(t, probs)
					})
				}
			}
		}
	}
}

// TestPostCopyPageConnBreak breaks the page connection at several moments.
// Before the commit the source, if it sees the break, resumes the process;
// once the target's copy runs (or the source committed without seeing it)
// the process is lost on both, its copy on the target killed before its
// lazy-pages, never running on zeros. A break after the last page leaves it
// running on the target.
func TestPostCopyPageConnBreak(t *testing.T) {
	breakAt := func(on, op string, cond func(w *world) bool) func(w *world) {
		return func(w *world) {
			w.afterOp = func(h *host, o string) {
				if c := w.pageConn(); h.name == on && o == op && c != nil && !c.broken && (cond == nil || cond(w)) {
					w.s.trace("BREAK page connection %s (after %s on %s)", c.id, op, on)
					c.broken = true
				}
			}
		}
	}
	pages := func(n int) func(w *world) bool {
		return func(w *world) bool { return w.targetLazy().got == n }
	}
	for _, c := range []struct {
		name  string
		setup func(w *world)
		hold  func(w *world, g *gor) bool
		want  string // "A", "B", "lost", or "B|lost"
	}{
		{name: "before the restore", setup: breakAt("A", "CRIU.DumpLazy", nil), want: "A"},
		{name: "after the target's restore, seen by the source before its commit",
			setup: breakAt("B", "Procs.Restore", nil), want: "A",
			hold: func(w *world, g *gor) bool {
				return g.name == "A0.out" && g.label == "fault point source-before-commit" && len(w.lazies) > 0 &&
					w.lazies[0].failure == nil
			}},
		{name: "after the target's restore, not seen by the source before its commit",
			setup: breakAt("B", "Procs.Restore", nil), want: "lost",
			hold: func(w *world, g *gor) bool { return g.name == "A0.out/lazy" && w.decision() == "" }},
		{name: "after the resume", setup: breakAt("B", "Procs.Activate", nil), want: "lost"},
		{name: "after the first page", setup: breakAt("B", "page", pages(1)), want: "lost"},
		{name: "after the last page", setup: breakAt("B", "page", pages(2)), want: "B|lost"},
		{name: "after the target's last word", want: "B", setup: func(w *world) {
			w.afterWrite = func(e *end, typ byte) {
				if typ == api.TPagesDone {
					w.s.trace("BREAK page connection %s (after PagesDone)", e.c.id)
					e.c.broken = true
				}
			}
		}},
	} {
		for _, v := range pcVariants {
			t.Run(c.name+"/"+v.name, func(t *testing.T) {
				w := run(t, pcCfg(v), c.hold, c.setup)
				defer dumpTrace(t, w)
				if pc := w.pageConn(); pc == nil || !pc.broken {
					t.Fatalf("the page connection did not break")
				}
				want := w.B()
				if c.want == "A" {
					want = w.A()
				}
				probs := append(w.problems(want), lostProperly(w)...)
				switch got := w.where(); {
				case c.want == "lost" && !w.lostOnBoth():
					probs = append(probs, fmt.Sprintf("want the process lost on both hosts: %s", w.describe()))
				case c.want == "B" && got != w.B():
					probs = append(probs, fmt.Sprintf("want the process running on B: %s", w.describe()))
				}
				t.Logf("target events %v", w.pcEvent)
				checkPostCopy(t, probs)
			})
		}
	}
}

// TestPostCopyCrashes kills a daemon at moments that are no fault point:
// the target's between the start of lazy-pages and the journaling of its
// pid (lazy-pages, which no shim holds yet, sees the end of its socket and
// exits); either while the resumed copy still misses pages (the target's:
// lazy-pages lives on, the copy's faults wait; the restarted daemon kills
// the copy, then lazy-pages; the source's: its CRIU ends with it, so the
// process is lost).
func TestPostCopyCrashes(t *testing.T) {
	crashIn := func(w *world, h *host) {
		w.s.trace("CRASH %s", h.name)
		w.s.crashHost(h)
		if w.s.cur.h == h {
			panic(crashPanic{})
		}
	}
	for _, c := range []struct {
		name  string
		setup func(w *world)
		want  string
	}{
		{"target, before lazy-pages is journaled", func(w *world) {
			w.beforePut = func(h *host, r *Record) bool {
				return h == w.B() && r.LazyPID != 0 && h.crashes == 0
			}
		}, "A"},
		{"target, after the resume", func(w *world) {
			w.afterOp = func(h *host, op string) {
				if h == w.B() && op == "Procs.Activate" && h.crashes == 0 {
					crashIn(w, h)
				}
			}
		}, "lost"},
		{"target, after the first page", func(w *world) {
			w.afterOp = func(h *host, op string) {
				if h == w.B() && op == "page" && h.crashes == 0 {
					crashIn(w, h)
				}
			}
		}, "lost"},
		{"source, after the first page", func(w *world) {
			w.afterOp = func(h *host, op string) {
				if op == "page" && w.A().crashes == 0 {
					crashIn(w, w.A())
				}
			}
		}, "lost"},
	} {
		for _, v := range pcVariants {
			t.Run(c.name+"/"+v.name, func(t *testing.T) {
				w := run(t, pcCfg(v), nil, c.setup)
				defer dumpTrace(t, w)
				if w.A().crashes+w.B().crashes != 1 {
					t.Fatalf("no crash")
				}
				want := w.B()
				if c.want == "A" {
					want = w.A()
				}
				probs := append(w.problems(want), lostProperly(w)...)
				if c.want == "lost" && !w.lostOnBoth() {
					probs = append(probs, fmt.Sprintf("want the process lost on both hosts: %s", w.describe()))
				}
				for _, lp := range w.B().lazyPages {
					if lp.cp != nil && lp.cp.zeros {
						probs = append(probs, "the copy on B was left to read zeros")
					}
				}
				t.Logf("target events %v", w.pcEvent)
				checkPostCopy(t, probs)
			})
		}
	}
}

// slowFixed is fixed, but when time must pass it passes for a sleep between
// tries first, then for another wait of a migration, for a wait on the page
// stream (a relay, Lazy.Wait) only if nothing else waits: the pages are slow
// to come, the tries quick.
type slowFixed struct{ fixed }

func (f *slowFixed) choose(s *sched, opts []choice, atPut bool) int {
	if atPut {
		return 0
	}
	for i, o := range opts {
		if o.kind == cRun && (f.hold == nil || !f.hold(o.g)) {
			return i
		}
	}
	for i, o := range opts {
		if o.kind == cRestart || o.kind == cRun {
			return i
		}
	}
	for _, sleep := range []bool{true, false} {
		for i, o := range opts {
			if o.kind == cTime && (o.g.label == "sleep") == sleep && !strings.HasSuffix(o.g.name, "/lazy") &&
				o.g.label != "Lazy.Wait" {
				return i
			}
		}
	}
	return f.fixed.choose(s, opts, atPut)
}

// TestPostCopyForwardStepFailsLong: a step after a post-copy commit fails
// more often than forwardSteps tries it in line, so the rest goes on in the
// background; /slow: the pages do not come while the fault lasts (the
// target's lazy-pages asks for none). The process must end running on the
// target or lost on both, with every record settled.
func TestPostCopyForwardStepFailsLong(t *testing.T) {
	for _, p := range []string{"source-before-kill", "source-before-cleanup", "target-before-resume", "target-before-rebind",
		"target-before-cleanup", "target-before-rebind/slow", "target-before-resume/slow"} {
		t.Run(p, func(t *testing.T) {
			point, slow := strings.CutSuffix(p, "/slow")
			cfg := pcCfg(variant{})
			cfg.faults = map[string]string{point: fmt.Sprintf("fail*%d", forwardTries+1)}
			w := newWorld(cfg, &slowFixed{})
			if slow {
				w.pagesWait = func() bool { return w.cfg.faults[point] != "" }
			}
			w.s.tracing = testing.Verbose()
			w.startOut()
			w.s.run()
			defer dumpTrace(t, w)
			probs := append(w.problems(w.B()), lostProperly(w)...)
			if !w.s.terminal {
				probs = append(probs, "the run did not end")
			}
			if len(w.cfg.faults) != 0 {
				probs = append(probs, fmt.Sprintf("the fault point was passed too few times: %v", w.cfg.faults))
			}
			t.Logf("target events %v", w.pcEvent)
			checkPostCopy(t, probs)
		})
	}
}

// The known bugs, one test each (knownBugs).

// TestPostCopyPageConnLeak: a post-copy migration that fails before the
// target's restore step took the page connection off its channel.
func TestPostCopyPageConnLeak(t *testing.T) {
	w := run(t, worldCfg{postCopy: true, faults: map[string]string{"source-before-dump": "fail"}}, nil, nil)
	defer dumpTrace(t, w)
	checkKnown(t, w.problems(w.A()))
}

// TestPostCopyResumeDeadStream: the source's daemon dies right after the
// commit (its CRIU, and so the page stream, with it); the target, in doubt,
// asks, hears "committed", and resumes its copy.
func TestPostCopyResumeDeadStream(t *testing.T) {
	w := run(t, worldCfg{postCopy: true, faults: map[string]string{"source-after-commit": "crash"}}, nil, nil)
	defer dumpTrace(t, w)
	checkKnown(t, append(w.problems(w.B()), lostProperly(w)...))
}

// TestPostCopyEarlyKill: the journal write (here the fault point) before the
// source's pages step fails.
func TestPostCopyEarlyKill(t *testing.T) {
	w := run(t, worldCfg{postCopy: true, faults: map[string]string{"source-before-pages": "fail"}}, nil, nil)
	defer dumpTrace(t, w)
	checkKnown(t, append(w.problems(w.B()), lostProperly(w)...))
}

// TestPostCopyLastAnswerLost: the page connection breaks after the target
// had every page and said so (TPagesDone), before the source read it.
func TestPostCopyLastAnswerLost(t *testing.T) {
	w := run(t, worldCfg{postCopy: true}, nil, func(w *world) {
		w.afterWrite = func(e *end, typ byte) {
			if typ == api.TPagesDone {
				e.c.broken = true
			}
		}
	})
	defer dumpTrace(t, w)
	probs := w.problems(w.B())
	if w.where() != w.B() {
		probs = append(probs, "the process does not run on B")
	}
	checkKnown(t, probs)
}

// TestPostCopyCrashAfterLastPage: the target's daemon dies right after its
// pages step saw the last page, before it journaled the next step.
func TestPostCopyCrashAfterLastPage(t *testing.T) {
	w := run(t, worldCfg{postCopy: true, faults: map[string]string{"target-after-pages": "crash"}}, nil, nil)
	defer dumpTrace(t, w)
	probs := w.problems(w.B())
	if w.where() != w.B() {
		probs = append(probs, fmt.Sprintf("the process does not run on B though every page had arrived there: %s (target events %v)",
			w.describe(), w.pcEvent))
	}
	checkKnown(t, probs)
}
