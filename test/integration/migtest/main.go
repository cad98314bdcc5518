// Command migtest holds the workloads the integration tests and the demo
// migrate. Each one checks its own state as it runs and prints lines the tests
// read back from `migrated logs`:
//
//	migtest counter              prints "count N" every 20 ms, N consecutive
//	migtest memcount MIB         both: MIB of pattern re-checked every 10 counts ("mem ok SUM"), and "count N"
//	migtest mem MIB              fills MIB of memory with a pattern, re-checks it: "mem ok SUM" / "mem BAD"
//	migtest threads N            N goroutines on locked OS threads count: "threads TOTAL"
//	migtest tree N               forks N children that each print "child K tick T"
//	migtest tcp-server ADDR      echo server; prints "server conns N bytes B"
//	migtest tcp-client LOCAL SRV sends numbered lines, checks the echoes: "client ok N"
//	migtest sink ADDR            reads one TCP connection to its end: "sink BYTES cpu SECONDS" (make bench)
//	migtest send ADDR MIB        writes MIB to ADDR: "send BYTES cpu SECONDS" (make bench)
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: migtest counter|mem|threads|tree|tcp-server|tcp-client ...")
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "counter":
		counter()
	case "memcount":
		memcount(atoi(arg(args, 0, "16")))
	case "mem":
		mem(atoi(arg(args, 0, "64")))
	case "threads":
		threads(atoi(arg(args, 0, "4")))
	case "tree":
		tree(atoi(arg(args, 0, "3")))
	case "memtree":
		memtree(atoi(arg(args, 0, "3")), atoi(arg(args, 1, "16")))
	case "memchild":
		memchild(atoi(arg(args, 0, "0")), atoi(arg(args, 1, "16")))
	case "child":
		child(atoi(arg(args, 0, "0")))
	case "tcp-server":
		tcpServer(arg(args, 0, ":7000"))
	case "tcp-client":
		tcpClient(arg(args, 0, ""), arg(args, 1, ""), atoi(arg(args, 2, "0")))
	case "sink":
		sink(arg(args, 0, ":7300"))
	case "send":
		send(arg(args, 0, ""), atoi(arg(args, 1, "1024")))
	default:
		fail("unknown workload " + os.Args[1])
	}
}

func counter() {
	for n := 0; ; n++ {
		fmt.Printf("count %d\n", n)
		time.Sleep(20 * time.Millisecond)
	}
}

// memcount counts like counter while it keeps MIB of pattern in memory and
// checks it every tenth count: a process whose memory and output sequence
// must both survive whatever happens to its migrations.
func memcount(mib int) {
	buf := fill(mib)
	want := sha256.Sum256(buf)
	fmt.Printf("mem ready %d MiB %x\n", mib, want[:8])
	for n := 0; ; n++ {
		if n%10 == 0 {
			if got := sha256.Sum256(buf); got != want {
				fmt.Printf("mem BAD %x\n", got[:8])
				os.Exit(1)
			}
			fmt.Printf("mem ok %x\n", want[:8])
		}
		fmt.Printf("count %d\n", n)
		time.Sleep(20 * time.Millisecond)
	}
}

func fill(mib int) []byte {
	buf := make([]byte, mib<<20)
	var x uint64 = 88172645463325252
	for i := 0; i+8 <= len(buf); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(buf[i:], x)
	}
	return buf
}

// mem keeps MIB of pattern in memory and checks it against its digest.
func mem(mib int) {
	buf := fill(mib)
	want := sha256.Sum256(buf)
	fmt.Printf("mem ready %d MiB %x\n", mib, want[:8])
	for {
		time.Sleep(200 * time.Millisecond)
		got := sha256.Sum256(buf)
		if got != want {
			fmt.Printf("mem BAD %x\n", got[:8])
			os.Exit(1)
		}
		fmt.Printf("mem ok %x\n", got[:8])
	}
}

func threads(n int) {
	var total atomic.Int64
	for i := 0; i < n; i++ {
		go func() {
			runtime.LockOSThread()
			for {
				total.Add(1)
				time.Sleep(time.Millisecond)
			}
		}()
	}
	for {
		time.Sleep(100 * time.Millisecond)
		fmt.Printf("threads %d tasks %d\n", total.Load(), countTasks())
	}
}

func countTasks() int {
	ents, _ := os.ReadDir("/proc/self/task")
	return len(ents)
}

// tree starts n children (itself re-executed) and waits for them.
func tree(n int) {
	self, _ := os.Executable()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		cmd := exec.Command(self, "child", strconv.Itoa(i))
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			fail(err.Error())
		}
		wg.Add(1)
		go func() { defer wg.Done(); cmd.Wait() }()
	}
	for t := 0; ; t++ {
		fmt.Printf("parent tick %d\n", t)
		time.Sleep(100 * time.Millisecond)
	}
}

// memtree starts N children that each keep MIB of their own pattern in
// memory and check it every 100 ms: a tree whose every process has memory
// that must survive its migrations.
func memtree(n, mib int) {
	self, _ := os.Executable()
	for i := 0; i < n; i++ {
		cmd := exec.Command(self, "memchild", strconv.Itoa(i), strconv.Itoa(mib))
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			fail(err.Error())
		}
		go cmd.Wait()
	}
	select {}
}

func memchild(k, mib int) {
	buf := fill(mib)
	for i := range buf { // a pattern of its own
		buf[i] ^= byte(k + 1)
	}
	want := sha256.Sum256(buf)
	fmt.Printf("child %d mem ready %x\n", k, want[:8])
	for t := 0; ; t++ {
		if got := sha256.Sum256(buf); got != want {
			fmt.Printf("child %d mem BAD %x\n", k, got[:8])
			os.Exit(1)
		}
		fmt.Printf("child %d mem ok %x tick %d\n", k, want[:8], t)
		time.Sleep(100 * time.Millisecond)
	}
}

func child(k int) {
	for t := 0; ; t++ {
		fmt.Printf("child %d tick %d\n", k, t)
		time.Sleep(100 * time.Millisecond)
	}
}

// tcpServer echoes every line back; it listens on a plain TCP socket (CRIU
// refuses Go's default MPTCP listeners).
func tcpServer(addr string) {
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp4", addr)
	if err != nil {
		fail(err.Error())
	}
	var conns, bytes atomic.Int64
	go func() {
		for {
			time.Sleep(200 * time.Millisecond)
			fmt.Printf("server conns %d bytes %d\n", conns.Load(), bytes.Load())
		}
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			fail(err.Error())
		}
		conns.Add(1)
		go func() {
			defer conns.Add(-1)
			n, err := io.Copy(countWriter{c, &bytes}, c)
			fmt.Printf("server conn closed after %d bytes: %v\n", n, err)
		}()
	}
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// tcpClient sends "seq N" lines from LOCAL (an IP, port chosen by the kernel)
// to SRV every 10 ms and checks that each echo comes back in order. It holds
// MIB of memory besides (a dump that takes its time).
func tcpClient(local, srv string, mib int) {
	mem := fill(mib)
	defer runtime.KeepAlive(mem)
	d := net.Dialer{Timeout: 5 * time.Second}
	d.SetMultipathTCP(false)
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp4", srv)
	if err != nil {
		fail(err.Error())
	}
	fmt.Printf("client connected %s -> %s\n", c.LocalAddr(), c.RemoteAddr())
	r := bufio.NewReader(c)
	for n := 0; ; n++ {
		if _, err := fmt.Fprintf(c, "seq %d\n", n); err != nil {
			fail(fmt.Sprintf("client write %d: %v", n, err))
		}
		line, err := r.ReadString('\n')
		if err != nil {
			fail(fmt.Sprintf("client read %d: %v", n, err))
		}
		if line != fmt.Sprintf("seq %d\n", n) {
			fail(fmt.Sprintf("client BAD echo %q for %d", line, n))
		}
		if n%10 == 0 {
			fmt.Printf("client ok %d\n", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func arg(a []string, i int, def string) string {
	if i < len(a) {
		return a[i]
	}
	return def
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fail("not a number: " + s)
	}
	return n
}

func fail(msg string) {
	fmt.Println("FAIL " + msg)
	os.Exit(1)
}

// cpuSeconds is the CPU time this process has used (user and system).
func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// sink accepts one connection on addr and reads it to its end: the
// receiving half of a plain socket copy, the yardstick of the daemons'
// relay in make bench.
func sink(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fail(err.Error())
	}
	fmt.Println("sink listening")
	c, err := l.Accept()
	if err != nil {
		fail(err.Error())
	}
	n, err := io.CopyBuffer(io.Discard, c, make([]byte, 1<<20))
	if err != nil {
		fail(err.Error())
	}
	fmt.Printf("sink %d cpu %.3f\n", n, cpuSeconds())
}

// send writes mib MiB to addr: the sending half of a plain socket copy.
func send(addr string, mib int) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		fail(err.Error())
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for i := 0; i < mib; i++ {
		if _, err := c.Write(buf); err != nil {
			fail(err.Error())
		}
	}
	c.Close()
	fmt.Printf("send %d cpu %.3f\n", int64(mib)<<20, cpuSeconds())
}
