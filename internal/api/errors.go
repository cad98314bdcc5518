package api

import (
	"errors"
	"fmt"
)

// Kind says what a failed request means for the caller, as the commands'
// exit statuses tell it (docs/cli.md): each kind is one status.
type Kind string

const (
	// KindFailed: the request failed; nothing more is known.
	KindFailed Kind = ""
	// KindNotFound: no such process, job or rank (for this caller).
	KindNotFound Kind = "not_found"
	// KindRefused: a migration did not happen and the process runs on
	// its source as before (refused, failed and rolled back, cancelled
	// or timed out before its commit).
	KindRefused Kind = "refused"
	// KindLost: the process is gone (a post-copy migration whose source
	// or link died before the last page).
	KindLost Kind = "lost"
	// KindUnreachable: a daemon could not be reached or did not answer.
	KindUnreachable Kind = "unreachable"
)

// Error is a failed request with its Kind. A daemon sends it to its client
// as a TFail message; Client.Do and Client.Stream return it.
type Error struct {
	Kind Kind   `json:"kind,omitempty"`
	Msg  string `json:"error"`
}

func (e *Error) Error() string { return e.Msg }

// Errorf is an error of kind k.
func Errorf(k Kind, format string, args ...any) error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...)}
}

// WithKind gives err kind k, keeping its words (nil stays nil). An error
// that has a kind already keeps it.
func WithKind(k Kind, err error) error {
	if err == nil || KindOf(err) != KindFailed {
		return err
	}
	return &kinded{k: k, err: err}
}

type kinded struct {
	k   Kind
	err error
}

func (e *kinded) Error() string { return e.err.Error() }
func (e *kinded) Unwrap() error { return e.err }

// KindOf is err's kind: the first one in its chain, KindFailed if none.
func KindOf(err error) Kind {
	for err != nil {
		switch e := err.(type) {
		case *Error:
			return e.Kind
		case *kinded:
			return e.k
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if k := KindOf(e); k != KindFailed {
					return k
				}
			}
			return KindFailed
		default:
			return KindFailed
		}
	}
	return KindFailed
}

// AsError is err as the message a daemon sends: its words and its kind.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) && e.Msg == err.Error() {
		return e
	}
	return &Error{Kind: KindOf(err), Msg: err.Error()}
}
