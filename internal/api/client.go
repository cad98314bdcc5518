package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"dsmigrate/internal/wire"
)

// DefaultSocket is where a daemon serves its local clients.
const DefaultSocket = "/run/migrated.sock"

// Client is a connection to one daemon, good for one request.
type Client struct {
	c   *wire.Conn
	via string // DialVia's host: set on every request as Request.Host
}

// DialLocal reaches this host's daemon over its unix socket. The daemon
// knows the caller by the socket's peer credentials: a user sees and acts
// on the processes it owns, root on all.
func DialLocal(path string) (*Client, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("cannot reach the daemon at %s: permission denied (a daemon older than "+
				"this client serves root only: run as root, or upgrade the daemon)", path)
		}
		return nil, Errorf(KindUnreachable, "cannot reach the daemon at %s (%v): is `migrated serve` running on this host?", path, err)
	}
	return &Client{c: wire.Plain(conn)}, nil
}

// DialVia reaches the daemon at host (ADDR:PORT) through this host's daemon
// at path, for a caller who holds no cluster token: the local daemon passes
// each request on, for the user the socket's peer credentials name, and
// relays the answer. The daemon at host then acts as that user.
func DialVia(path, host string) (*Client, error) {
	c, err := DialLocal(path)
	if err != nil {
		return nil, err
	}
	c.via = host
	return c, nil
}

// DialRemote reaches the daemon at addr over TCP, authenticated with token.
func DialRemote(addr string, token []byte) (*Client, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, Errorf(KindUnreachable, "daemon %s unreachable: %v", addr, err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	wc, err := wire.Client(conn, token)
	if err != nil {
		conn.Close()
		return nil, WithKind(KindUnreachable, fmt.Errorf("daemon %s: %w", addr, err))
	}
	conn.SetDeadline(time.Time{})
	return &Client{c: wc}, nil
}

// Close ends the connection.
func (c *Client) Close() error { return c.c.Close() }

// Cancel calls off the request in flight (a migration, up to its commit)
// while Stream goes on reading the answer: it half-closes the connection,
// which the daemon takes as its client's cancel. It may be called from any
// goroutine.
func (c *Client) Cancel() error { return c.c.CloseWrite() }

// Do sends req and waits for its reply; the connection is closed after.
// A failure comes back as an *Error, with its kind.
func (c *Client) Do(req Request) (*Reply, error) {
	return c.Stream(req, nil, nil)
}

// Stream sends req and passes log data to out and events to ev until the
// final reply, which it returns. It serves logs, follow and migrate.
func (c *Client) Stream(req Request, out io.Writer, ev func(Event)) (*Reply, error) {
	defer c.Close()
	req.Host = c.via
	if err := c.c.WriteJSON(TRequest, &req); err != nil {
		return nil, err
	}
	for {
		typ, b, err := c.c.ReadMsg()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, Errorf(KindUnreachable, "the daemon closed the connection before it answered: "+
					"see its log (journalctl -u migrated)")
			}
			return nil, err
		}
		switch typ {
		case TLogData:
			if out != nil {
				if _, err := out.Write(b); err != nil {
					return nil, err
				}
			}
		case TEvent:
			var e Event
			if json.Unmarshal(b, &e) == nil && ev != nil {
				ev(e)
			}
		case TReply:
			var r Reply
			if err := json.Unmarshal(b, &r); err != nil {
				return nil, fmt.Errorf("malformed reply: %v", err)
			}
			return &r, nil
		case TFail:
			var e Error
			if err := json.Unmarshal(b, &e); err != nil {
				return nil, fmt.Errorf("malformed failure: %v", err)
			}
			return nil, &e
		case wire.TypeError:
			return nil, Unwrap(c.c.DecodeError(b))
		default:
			return nil, fmt.Errorf("unexpected message type %d", typ)
		}
	}
}

// Unwrap strips the transport's wording from a daemon's error.
func Unwrap(err error) error {
	var re *wire.RemoteError
	if errors.As(err, &re) {
		return errors.New(re.Msg)
	}
	return err
}
