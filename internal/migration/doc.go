// Package migration is the migration engine of a migrated daemon: the steps
// that move a process from this host to another (Engine.Out) and those that
// receive one (Engine.In), the commit protocol between the two daemons, and
// the settling of whatever a crash or a restart left unfinished
// (Engine.Recover). It owns no process, socket or file itself: CRIU, the
// network mover, the quiescer, the process table with its shims, the peer
// connections and the journal are small interfaces (engine.go), which
// internal/daemon implements for real and the tests with fakes, so the commit
// and rollback logic runs without root and under a model checker.
//
// # Steps
//
// Each side is a list of named steps, each with its undo:
//
//	source: claim, connect, prepare, freeze, dump, transfer, [move-ip], restore, commit | kill, confirm, cleanup
//	target: accept, pages, images, await-restore, [net], restore, await-commit | resume, rebind, cleanup
//
// Before a step begins, its name is journaled in the migration's Record
// (write, rename): after the daemon's death it knows every step that may
// have had an effect. Those writes are not synced to disk: a crash of the
// whole host, which could lose one, takes the process copies, addresses and
// locks it speaks of with it. The source's decision (commit or abort),
// which the other daemon acts on, is synced, and so is every later write of
// its record (Journal.PutDurable). A step that fails is undone with every step before it,
// in reverse order. Undos are idempotent and work from the record alone, so
// Recover can run them for a step that may or may not have happened. The
// steps after the bar follow the commit: they are never undone, only
// finished (tried again until they succeed; a restarted daemon finishes
// them). Every step has fault points before and after it (Point), which the
// daemon arms from files and the tests use to fail a step, or to kill the
// daemon there; the daemon's dump has one inside it too
// (source-during-dump, once CRIU streams the memory).
//
// Every network step has its own deadline within the migration's context
// (Timeouts): the handshake and begin, each frame of the page stream and
// of the image transfer (a transfer that stalls fails, one that moves does
// not), the restore, the commit. A stalled peer therefore cannot keep a
// process frozen (the source's undo resumes it) nor pin a reservation on
// the target (its undo drops it), with one exception argued below: a
// target in doubt.
//
// # The commit, and why the process runs exactly once
//
// The source decides, and its decision is journaled before anything acts on
// it. The rules:
//
//  1. The source commits (Record.Decision = Committed, durably) only after
//     the target reported the restore, and only if the migration is not
//     aborted already. Only after that does it kill its copy.
//  2. The source resumes its copy only after the migration is aborted,
//     durably (runSteps decides Aborted before any undo; Recover likewise).
//  3. The target resumes its copy only when the source said Committed: the
//     commit message, or the answer to an outcome question.
//  4. An outcome question about an undecided migration aborts it (Answer),
//     durably, before the answer leaves. The answer is therefore final.
//  5. Before it reports the restore (a step journaled as await-commit before
//     the report is sent), the target may undo alone: the source cannot
//     have committed (rule 1). From then on it is in doubt and must not act
//     alone: it asks the source until it gets an answer.
//
// A decision is made once (decide keeps the first). By 1 and 2 the source's
// copy is killed only after Committed and resumed only after Aborted, so at
// most one of the two happens. By 3 the target's copy runs only after
// Committed, and by 4 no question can make a committed migration look
// aborted or the reverse. After a commit the source's copy is killed and the
// target's resumed: the source's kill is a forward step (a restarted source
// finishes it), and the target resumes as soon as it learns the decision,
// by message or by asking. After an abort the source resumes (an undo,
// which a restarted source also runs) and the target drops its copy (its
// undo, after the failed step or the answer). So the process ends running
// exactly once, on one side, whichever daemon dies at whichever step, as
// long as a dead daemon comes back: the process itself never depends on a
// daemon, since shims hold it (internal/shim).
//
// The exception: a target in doubt whose source never comes back keeps its
// stopped copy and asks forever, because resuming it might run the process
// twice and dropping it might run it nowhere. It logs that it is waiting.
//
// Addresses and locks follow the process: with MoveIP the source removes
// the address (after exporting CRIU's network lock, which the target imports
// before it adds the address) and puts it back when undoing; the target
// removes both when undoing. So once both sides are settled, the address is
// on the host where the process runs, and no lock table is left: CRIU's
// restore deletes the target's copy, the source's cleanup or undo its own.
//
// The model check in model_test.go runs this code, both sides, under a
// scheduler that explores the interleavings with connection loss and a
// crash and restart of either daemon at every step, and checks these
// claims at the end of every run.
package migration
